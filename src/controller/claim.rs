//! The claim step: one active instance per phone number, across the whole
//! cluster.
//!
//! Before anything is deployed, a WhatsAppNumber claims its number with a
//! cluster-scoped `WhatsAppNumberClaim` named from the number's digits, whose
//! holder is `namespace/name/uid`. Creating it is atomic, so of several
//! WhatsAppNumbers racing for one number exactly one wins, whichever
//! installation of the operator (namespace or cluster scope, any namespace)
//! reconciles them. The claim is released through a finalizer when the holder
//! is deleted; the others are woken by the watch on claims and take it over.
//!
//! Builds from before the claim kind kept claims as Leases in the operator's namespace. Such a
//! Lease still counts while no claim object exists, and goes once its holder
//! holds the claim object.

use k8s_openapi::api::coordination::v1::Lease;
use kube::api::{DeleteParams, ObjectMeta, PostParams, Preconditions};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Api, Client, ResourceExt};
use std::collections::BTreeMap;

use super::cache::{Cache, NotReady};
use crate::api::{WhatsAppNumber, WhatsAppNumberClaim, WhatsAppNumberClaimSpec, claim_name};
use crate::resources::names::{FIELD_MANAGER, LABEL_MANAGED_BY, MANAGED_BY};
use crate::telemetry::metrics::Metrics;

/// What can keep the claim step from an answer, with the object it concerns.
#[derive(Debug, thiserror::Error)]
pub enum ClaimError {
    #[error("{action}: {source}")]
    Api {
        action: String,
        #[source]
        source: kube::Error,
    },
    #[error("the number claim {0} kept changing while it was being claimed")]
    Contended(String),
    #[error(transparent)]
    CacheNotReady(#[from] NotReady),
}

impl ClaimError {
    /// A short label for metrics, by cause (as the reconcile's own errors).
    pub fn reason(&self) -> &'static str {
        match self {
            ClaimError::Api { source, .. } => super::error::api_reason(source),
            ClaimError::Contended(_) => "ClaimContended",
            ClaimError::CacheNotReady(_) => "CacheNotReady",
        }
    }
}

/// Names the request that failed.
fn failed(action: impl std::fmt::Display) -> impl FnOnce(kube::Error) -> ClaimError {
    move |source| ClaimError::Api { action: action.to_string(), source }
}

pub type Result<T, E = ClaimError> = std::result::Result<T, E>;

/// Label on the claim Leases of builds from before the claim kind (the
/// operator watches them by it).
pub const LEGACY_CLAIM_LABEL: &str = "whatsapp.operators.dev/number-claim";
/// The finalizer that releases the claim when a WhatsAppNumber is deleted.
pub const FINALIZER: &str = "whatsapp.operators.dev/number-claim";
/// Annotation with the full E.164 number on claims and legacy claim Leases.
pub const NUMBER_ANNOTATION: &str = "whatsapp.operators.dev/phone-number";

/// `namespace/name/uid`: the uid tells a re-created object from the old one.
pub fn holder_identity(wan: &WhatsAppNumber) -> String {
    format!("{}/{}/{}", wan.namespace().unwrap_or_default(), wan.name_any(), wan.uid().unwrap_or_default())
}

/// Who holds a number.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Claim {
    /// This WhatsAppNumber holds it and may deploy.
    Held,
    /// Another WhatsAppNumber holds it (its holder identity).
    HeldBy(String),
    /// Nobody holds it (or its holder is gone) and it was only looked at.
    Free,
    /// This WhatsAppNumber holds it through another installation of the
    /// operator (its namespace): two installations watch the object, and the
    /// one that claimed the number first manages it.
    ManagedElsewhere(String),
}

/// What [`Claims::claim`] may do with a free number.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Intent {
    /// Take it.
    Take,
    /// Only look: nodes of another instance of the number still run, and the
    /// object that runs them is the one to re-claim a lost claim.
    Inspect,
}

/// The claim object granting `wan` its number through `installation`.
pub fn claim_object(wan: &WhatsAppNumber, installation: &str, resource_version: Option<String>) -> WhatsAppNumberClaim {
    let spec = WhatsAppNumberClaimSpec {
        phone_number: wan.spec.phone_number.clone(),
        holder: holder_identity(wan),
        installation: installation.into(),
    };
    let mut claim = WhatsAppNumberClaim::new(&claim_name(&wan.spec.phone_number), spec);
    claim.metadata = ObjectMeta {
        resource_version,
        labels: Some(BTreeMap::from([(LABEL_MANAGED_BY.to_string(), MANAGED_BY.to_string())])),
        annotations: Some(BTreeMap::from([(NUMBER_ANNOTATION.to_string(), wan.spec.phone_number.clone())])),
        ..claim.metadata
    };
    claim
}

fn lease_holder(lease: &Lease) -> Option<String> {
    lease.spec.as_ref()?.holder_identity.clone().filter(|h| !h.is_empty())
}

fn claim_holder(claim: &WhatsAppNumberClaim) -> Option<String> {
    Some(claim.spec.holder.clone()).filter(|h| !h.is_empty())
}

/// What a claim object says to `me`, before any holder is looked up.
#[derive(Debug, PartialEq, Eq)]
enum Reading {
    Mine,
    MineElsewhere(String),
    Other(String),
    Abandoned,
}

fn read(claim: &WhatsAppNumberClaim, me: &str, installation: &str) -> Reading {
    match claim_holder(claim) {
        Some(h) if h == me && claim.spec.installation == installation => Reading::Mine,
        Some(h) if h == me => Reading::MineElsewhere(claim.spec.installation.clone()),
        Some(h) => Reading::Other(h),
        None => Reading::Abandoned,
    }
}

/// Where claims are kept and read.
pub struct Claims<'a> {
    pub client: &'a Client,
    /// The claim objects, cached.
    pub cache: &'a Cache<WhatsAppNumberClaim>,
    /// The claim Leases of builds from before the claim kind, in the
    /// operator's namespace, cached.
    pub legacy: &'a Cache<Lease>,
    /// Every WhatsAppNumber the operator watches.
    pub numbers: &'a Store<super::cache::NumberObject>,
    /// This installation: the operator's namespace.
    pub installation: &'a str,
    /// Counts the claim writes with the operator's others.
    pub metrics: &'a Metrics,
}

impl Claims<'_> {
    /// Claims the number for `wan` (or, with [`Intent::Inspect`], only looks),
    /// or says who holds it. Decides from the caches; after a lost race it
    /// reads the API, since the cache may not have seen the winner yet.
    pub async fn claim(&self, wan: &WhatsAppNumber, intent: Intent) -> Result<Claim> {
        let api: Api<WhatsAppNumberClaim> = Api::all(self.client.clone());
        let name = claim_name(&wan.spec.phone_number);
        let me = holder_identity(wan);
        let post = PostParams { field_manager: Some(FIELD_MANAGER.into()), ..Default::default() };
        // A lost race (409) means someone else wrote first: read again and decide on fresh data.
        for attempt in 0..3 {
            let current = match attempt {
                0 => self.cache.get_cluster(&name).await?.map(|c| (*c).clone()),
                _ => api.get_opt(&name).await.map_err(failed(format!("reading the number claim {name}")))?,
            };
            let result = match current {
                None => {
                    // A Lease an earlier build granted still holds the number.
                    let legacy = self.legacy.get(self.installation, &name).await?;
                    if let Some(holder) = legacy.as_deref().and_then(lease_holder).filter(|h| *h != me)
                        && self.holder_exists(&holder).await?
                    {
                        return Ok(Claim::HeldBy(holder));
                    }
                    if intent == Intent::Inspect {
                        return Ok(Claim::Free);
                    }
                    let created = api.create(&post, &claim_object(wan, self.installation, None)).await;
                    created.inspect(|_| self.metrics.record_write("WhatsAppNumberClaim", "create"))
                }
                Some(claim) => match read(&claim, &me, self.installation) {
                    Reading::Mine => {
                        self.drop_legacy(&name, &me).await?;
                        return Ok(Claim::Held);
                    }
                    Reading::MineElsewhere(installation) => return Ok(Claim::ManagedElsewhere(installation)),
                    Reading::Other(holder) if self.holder_exists(&holder).await? => return Ok(Claim::HeldBy(holder)),
                    _ if intent == Intent::Inspect => return Ok(Claim::Free),
                    // Abandoned (its holder is gone): take it over, guarded by the resource version.
                    _ => {
                        tracing::info!(claim = %name, "taking over a number claim whose holder no longer exists");
                        let taken = claim_object(wan, self.installation, claim.resource_version());
                        let replaced = api.replace(&name, &post, &taken).await;
                        replaced.inspect(|_| self.metrics.record_write("WhatsAppNumberClaim", "replace"))
                    }
                },
            };
            match result {
                Ok(_) => {
                    self.drop_legacy(&name, &me).await?;
                    return Ok(Claim::Held);
                }
                Err(kube::Error::Api(s)) if s.code == 409 => continue,
                Err(e) => return Err(failed(format!("writing the number claim {name}"))(e)),
            }
        }
        Err(ClaimError::Contended(name))
    }

    /// Deletes the legacy Lease `me` holds, now that the claim object says the same.
    async fn drop_legacy(&self, name: &str, me: &str) -> Result<()> {
        match self.legacy.get(self.installation, name).await? {
            Some(lease) => release_lease(self.client, self.metrics, self.installation, &lease, me).await,
            None => Ok(()),
        }
    }

    /// Whether the holder still exists. A holder the cache shows is; one it
    /// does not show is looked up, and a holder in a namespace this operator
    /// may not read counts as alive: never take a number on a guess.
    async fn holder_exists(&self, holder: &str) -> Result<bool> {
        let mut parts = holder.splitn(3, '/');
        let (Some(ns), Some(name), Some(uid)) = (parts.next(), parts.next(), parts.next()) else {
            return Ok(false);
        };
        let cached = self.numbers.get(&ObjectRef::new(name).within(ns));
        if cached.is_some_and(|w| w.uid().as_deref() == Some(uid)) {
            return Ok(true);
        }
        // Metadata only: a holder the operator cannot decode still holds the number.
        let api: Api<WhatsAppNumber> = Api::namespaced(self.client.clone(), ns);
        match api.get_metadata_opt(name).await {
            Ok(found) => Ok(found.is_some_and(|w| w.uid().as_deref() == Some(uid))),
            Err(kube::Error::Api(s)) if s.code == 403 => Ok(true),
            Err(e) => Err(failed(format!("looking up the claim holder {holder}"))(e)),
        }
    }
}

/// Whether `wan` holds its number's claim as the API server has it now, not
/// as the claim cache last showed it: read before nodes start from none, since
/// a claim deleted by hand and taken by another object a moment ago may not
/// have reached the cache yet.
pub async fn held_now(client: &Client, wan: &WhatsAppNumber, installation: &str) -> Result<bool> {
    let name = claim_name(&wan.spec.phone_number);
    let api: Api<WhatsAppNumberClaim> = Api::all(client.clone());
    let claim = api.get_opt(&name).await.map_err(failed(format!("reading the number claim {name}")))?;
    Ok(claim.is_some_and(|c| matches!(read(&c, &holder_identity(wan), installation), Reading::Mine)))
}

/// Releases the claim (and a legacy claim Lease) if `wan` holds it; deletes
/// are guarded by uid and resource version, so a claim taken over in between
/// is left alone.
pub async fn release(client: &Client, metrics: &Metrics, operator_namespace: &str, wan: &WhatsAppNumber) -> Result<()> {
    let name = claim_name(&wan.spec.phone_number);
    let me = holder_identity(wan);
    let claims = Api::<WhatsAppNumberClaim>::all(client.clone());
    if let Some(claim) = claims.get_opt(&name).await.map_err(failed(format!("reading the number claim {name}")))? {
        release_claim(client, metrics, &claim, &me).await?;
    }
    let leases: Api<Lease> = Api::namespaced(client.clone(), operator_namespace);
    let lease =
        leases.get_opt(&name).await.map_err(failed(format!("reading the claim Lease {operator_namespace}/{name}")))?;
    match lease {
        Some(lease) => release_lease(client, metrics, operator_namespace, &lease, &me).await,
        None => Ok(()),
    }
}

/// The claims `identity` holds, found by holder (for an object whose spec
/// cannot be read): the claim object and a legacy Lease.
pub async fn held_by(
    claims: &Cache<WhatsAppNumberClaim>,
    legacy: &Cache<Lease>,
    identity: &str,
) -> Result<(Option<WhatsAppNumberClaim>, Option<Lease>)> {
    let claim = claims.filter(|c| claim_holder(c).as_deref() == Some(identity)).await?;
    let lease = legacy.filter(|l| lease_holder(l).as_deref() == Some(identity)).await?;
    Ok((claim.first().map(|c| (**c).clone()), lease.first().map(|l| (**l).clone())))
}

fn guarded(meta: &ObjectMeta) -> DeleteParams {
    DeleteParams {
        preconditions: Some(Preconditions { uid: meta.uid.clone(), resource_version: meta.resource_version.clone() }),
        ..Default::default()
    }
}

fn gone_or_changed(result: kube::Result<impl Sized>, what: &str, metrics: &Metrics, kind: &str) -> Result<()> {
    match result {
        Ok(_) => {
            metrics.record_write(kind, "delete");
            Ok(())
        }
        Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => Ok(()),
        Err(e) => Err(failed(format!("releasing {what}"))(e)),
    }
}

/// Deletes `claim` if `identity` holds it.
pub async fn release_claim(
    client: &Client,
    metrics: &Metrics,
    claim: &WhatsAppNumberClaim,
    identity: &str,
) -> Result<()> {
    if claim_holder(claim).as_deref() != Some(identity) {
        return Ok(());
    }
    let api: Api<WhatsAppNumberClaim> = Api::all(client.clone());
    let what = format!("the number claim {}", claim.name_any());
    let deleted = api.delete(&claim.name_any(), &guarded(&claim.metadata)).await.map(|_| ());
    gone_or_changed(deleted, &what, metrics, "WhatsAppNumberClaim")
}

/// Deletes the legacy claim `lease` if `identity` holds it.
pub async fn release_lease(
    client: &Client,
    metrics: &Metrics,
    operator_namespace: &str,
    lease: &Lease,
    identity: &str,
) -> Result<()> {
    if lease_holder(lease).as_deref() != Some(identity) {
        return Ok(());
    }
    let api: Api<Lease> = Api::namespaced(client.clone(), operator_namespace);
    let what = format!("the claim Lease {operator_namespace}/{}", lease.name_any());
    let deleted = api.delete(&lease.name_any(), &guarded(&lease.metadata)).await.map(|_| ());
    gone_or_changed(deleted, &what, metrics, "Lease")
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::coordination::v1::LeaseSpec;

    use super::*;
    use crate::fixtures::sample;

    #[test]
    fn a_claim_is_named_from_the_digits_and_holds_the_identity() {
        let wan = sample();
        assert_eq!(claim_name("+15550001111"), "whatsapp-number-15550001111");
        assert_eq!(holder_identity(&wan), "team/acme/1234-5678");
        let claim = claim_object(&wan, "ops", Some("7".into()));
        assert_eq!(claim.metadata.name.as_deref(), Some("whatsapp-number-15550001111"));
        assert_eq!(claim.metadata.namespace, None, "cluster-scoped");
        assert_eq!(claim.metadata.resource_version.as_deref(), Some("7"));
        assert_eq!(claim.spec.holder, "team/acme/1234-5678");
        assert_eq!(claim.spec.installation, "ops");
        assert_eq!(claim.metadata.annotations.unwrap()[NUMBER_ANNOTATION], "+15550001111");
    }

    #[test]
    fn a_claim_reads_differently_to_its_holder_other_installations_and_others() {
        let wan = sample();
        let me = holder_identity(&wan);
        let claim = claim_object(&wan, "ops", None);
        assert_eq!(read(&claim, &me, "ops"), Reading::Mine);
        assert_eq!(read(&claim, &me, "ops-2"), Reading::MineElsewhere("ops".into()));
        assert_eq!(read(&claim, "team/other/9", "ops"), Reading::Other(me.clone()));
        let mut empty = claim.clone();
        empty.spec.holder = String::new();
        assert_eq!(read(&empty, &me, "ops"), Reading::Abandoned);
    }

    #[test]
    fn an_empty_lease_holder_counts_as_free() {
        let lease = Lease {
            spec: Some(LeaseSpec { holder_identity: Some(String::new()), ..Default::default() }),
            ..Default::default()
        };
        assert_eq!(lease_holder(&lease), None);
    }

    #[test]
    fn errors_name_the_request_and_keep_the_cause() {
        let forbidden =
            kube::Error::Api(Box::new(kube::core::Status::failure("claims are forbidden", "Forbidden").with_code(403)));
        let e = failed("writing the number claim wa-15550001111")(forbidden);
        assert_eq!(e.reason(), "Forbidden");
        assert!(e.to_string().starts_with("writing the number claim wa-15550001111: "), "{e}");
        let wrapped = crate::controller::error::Error::from(e);
        assert_eq!(wrapped.reason(), "Forbidden");
        assert!(wrapped.to_string().contains("wa-15550001111"), "{wrapped}");
        assert_eq!(ClaimError::Contended("wa-1".into()).reason(), "ClaimContended");
        assert_eq!(ClaimError::from(NotReady("claims")).reason(), "CacheNotReady");
    }
}
