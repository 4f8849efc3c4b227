//! One active instance per phone number, across the whole cluster.
//!
//! Before anything is deployed, a WhatsAppNumber claims its number with a Lease
//! in the operator's namespace, named from the number's digits, whose holder is
//! `namespace/name/uid`. Creating a Lease is atomic, so of several
//! WhatsAppNumbers racing for one number exactly one wins. The claim is
//! released through a finalizer when the holder is deleted; the others are
//! woken by the watch on claim Leases and take it over.

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use kube::api::{ApiResource, DeleteParams, DynamicObject, ObjectMeta, PostParams, Preconditions};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Api, Client, ResourceExt};
use std::collections::BTreeMap;

use crate::api::WhatsAppNumber;
use crate::controller::cache::Cache;
use crate::controller::error::{Error, Result};
use crate::resources::names::{FIELD_MANAGER, LABEL_MANAGED_BY, MANAGED_BY, number_digits};

/// Label on every claim Lease (the operator watches them by it).
pub const CLAIM_LABEL: &str = "whatsapp.operators.dev/number-claim";
/// The finalizer that releases the claim when a WhatsAppNumber is deleted.
pub const FINALIZER: &str = "whatsapp.operators.dev/number-claim";
/// Annotation with the full E.164 number on the claim Lease.
pub const NUMBER_ANNOTATION: &str = "whatsapp.operators.dev/phone-number";

pub fn lease_name(phone_number: &str) -> String {
    format!("whatsapp-number-{}", number_digits(phone_number))
}

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
}

/// What [`claim`] may do with a free number.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Intent {
    /// Take it.
    Take,
    /// Only look: nodes of another instance of the number still run, and the
    /// object that runs them is the one to re-claim a lost Lease.
    Inspect,
}

fn claim_lease(wan: &WhatsAppNumber, namespace: &str, resource_version: Option<String>) -> Lease {
    Lease {
        metadata: ObjectMeta {
            name: Some(lease_name(&wan.spec.phone_number)),
            namespace: Some(namespace.into()),
            resource_version,
            labels: Some(BTreeMap::from([
                (CLAIM_LABEL.to_string(), "true".to_string()),
                (LABEL_MANAGED_BY.to_string(), MANAGED_BY.to_string()),
            ])),
            annotations: Some(BTreeMap::from([(NUMBER_ANNOTATION.to_string(), wan.spec.phone_number.clone())])),
            ..Default::default()
        },
        spec: Some(LeaseSpec { holder_identity: Some(holder_identity(wan)), ..Default::default() }),
    }
}

fn holder_of(lease: &Lease) -> Option<String> {
    lease.spec.as_ref()?.holder_identity.clone().filter(|h| !h.is_empty())
}

/// Where claims are kept and read.
pub struct Claims<'a> {
    pub client: &'a Client,
    /// The claim Leases, cached.
    pub cache: &'a Cache<Lease>,
    /// Every WhatsAppNumber the operator watches.
    pub numbers: &'a Store<DynamicObject>,
    /// The operator's namespace, which holds the Leases.
    pub namespace: &'a str,
}

impl Claims<'_> {
    /// Claims the number for `wan` (or, with [`Intent::Inspect`], only looks),
    /// or says who holds it. Decides from the cache; after a lost race it reads
    /// the API, since the cache may not have seen the winner yet.
    pub async fn claim(&self, wan: &WhatsAppNumber, intent: Intent) -> Result<Claim> {
        let api: Api<Lease> = Api::namespaced(self.client.clone(), self.namespace);
        let name = lease_name(&wan.spec.phone_number);
        let me = holder_identity(wan);
        let post = PostParams { field_manager: Some(FIELD_MANAGER.into()), ..Default::default() };
        // A lost race (409) means someone else wrote first: read again and decide on fresh data.
        for attempt in 0..3 {
            let current = match attempt {
                0 => self.cache.get(self.namespace, &name).await?.map(|l| (*l).clone()),
                _ => api.get_opt(&name).await?,
            };
            let result = match current {
                None if intent == Intent::Inspect => return Ok(Claim::Free),
                None => api.create(&post, &claim_lease(wan, self.namespace, None)).await,
                Some(lease) => match holder_of(&lease) {
                    Some(holder) if holder == me => return Ok(Claim::Held),
                    Some(holder) if self.holder_exists(&holder).await? => return Ok(Claim::HeldBy(holder)),
                    _ if intent == Intent::Inspect => return Ok(Claim::Free),
                    // Abandoned (its holder is gone): take it over, guarded by the resource version.
                    _ => {
                        tracing::info!(lease = %name, "taking over a number claim whose holder no longer exists");
                        api.replace(&name, &post, &claim_lease(wan, self.namespace, lease.resource_version())).await
                    }
                },
            };
            match result {
                Ok(_) => return Ok(Claim::Held),
                Err(kube::Error::Api(s)) if s.code == 409 => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Err(Error::ClaimContended(name))
    }

    /// Whether the holder still exists. A holder the cache shows is; one it
    /// does not show is looked up, and a holder in a namespace this operator
    /// may not read counts as alive: never take a number on a guess.
    async fn holder_exists(&self, holder: &str) -> Result<bool> {
        let mut parts = holder.splitn(3, '/');
        let (Some(ns), Some(name), Some(uid)) = (parts.next(), parts.next(), parts.next()) else {
            return Ok(false);
        };
        let resource = ApiResource::erase::<WhatsAppNumber>(&());
        let cached = self.numbers.get(&ObjectRef::new_with(name, resource).within(ns));
        if cached.is_some_and(|w| w.uid().as_deref() == Some(uid)) {
            return Ok(true);
        }
        // Metadata only: a holder the operator cannot decode still holds the number.
        let api: Api<WhatsAppNumber> = Api::namespaced(self.client.clone(), ns);
        match api.get_metadata_opt(name).await {
            Ok(found) => Ok(found.is_some_and(|w| w.uid().as_deref() == Some(uid))),
            Err(kube::Error::Api(s)) if s.code == 403 => Ok(true),
            Err(e) => Err(e.into()),
        }
    }
}

/// Releases the claim if `wan` holds it; the delete is guarded by the Lease's
/// uid and resource version so a claim taken over in between is left alone.
pub async fn release(client: &Client, operator_namespace: &str, wan: &WhatsAppNumber) -> Result<()> {
    let api: Api<Lease> = Api::namespaced(client.clone(), operator_namespace);
    let Some(lease) = api.get_opt(&lease_name(&wan.spec.phone_number)).await? else { return Ok(()) };
    release_lease(client, operator_namespace, &lease, &holder_identity(wan)).await
}

/// The claim Lease `identity` holds, found by its holder (for an object whose
/// spec cannot be read).
pub async fn held_by(claims: &Cache<Lease>, identity: &str) -> Result<Option<Lease>> {
    let held = claims.filter(|l| holder_of(l).as_deref() == Some(identity)).await?;
    Ok(held.first().map(|l| (**l).clone()))
}

/// Deletes `lease` if `identity` holds it, guarded like [`release`].
pub async fn release_lease(client: &Client, operator_namespace: &str, lease: &Lease, identity: &str) -> Result<()> {
    let api: Api<Lease> = Api::namespaced(client.clone(), operator_namespace);
    let name = lease.name_any();
    if holder_of(lease).as_deref() != Some(identity) {
        return Ok(());
    }
    let params = DeleteParams {
        preconditions: Some(Preconditions { uid: lease.uid(), resource_version: lease.resource_version() }),
        ..Default::default()
    };
    match api.delete(&name, &params).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => Ok(()),
        Err(e) => Err(e.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources::tests::sample;

    #[test]
    fn lease_is_named_from_the_digits_and_holds_the_identity() {
        let wan = sample();
        assert_eq!(lease_name("+15550001111"), "whatsapp-number-15550001111");
        assert_eq!(holder_identity(&wan), "team/acme/1234-5678");
        let lease = claim_lease(&wan, "ops", None);
        assert_eq!(lease.metadata.namespace.as_deref(), Some("ops"));
        assert_eq!(holder_of(&lease).as_deref(), Some("team/acme/1234-5678"));
        assert_eq!(lease.metadata.labels.unwrap()[CLAIM_LABEL], "true");
        assert_eq!(lease.metadata.annotations.unwrap()[NUMBER_ANNOTATION], "+15550001111");
        assert!(lease.spec.unwrap().lease_duration_seconds.is_none(), "a claim does not expire on its own");
    }

    #[test]
    fn empty_holder_counts_as_free() {
        let lease = Lease {
            spec: Some(LeaseSpec { holder_identity: Some(String::new()), ..Default::default() }),
            ..Default::default()
        };
        assert_eq!(holder_of(&lease), None);
    }
}
