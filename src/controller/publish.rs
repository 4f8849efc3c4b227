//! The last step of a reconcile: the status, when it changed, with the
//! events and metrics of what changed.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{Patch, PatchParams};
use kube::runtime::events::Event;
use kube::{Api, Resource, ResourceExt};
use serde_json::json;
use tracing::warn;

use super::error::{Error, Result};
use super::status::{self, Outcome};
use super::{Context, events};
use crate::api::{WhatsAppNumber, WhatsAppNumberStatus};
use crate::resources::names::FIELD_MANAGER;

pub async fn publish(ctx: &Context, wan: &WhatsAppNumber, notice: events::Notice) {
    let event = Event {
        type_: notice.type_,
        reason: notice.reason,
        note: Some(notice.note),
        action: "Reconcile".into(),
        secondary: None,
    };
    match ctx.recorder.publish(&event, &wan.object_ref(&())).await {
        Ok(()) => ctx.metrics.record_write("Event", "create"),
        Err(e) => warn!(error = %e, "could not publish an event"),
    }
}

/// Writes the status for `outcome` if it differs from the stored one, with
/// the events and metrics of what changed.
/// Returns whether the status changed.
pub async fn publish_status(ctx: &Context, wan: &WhatsAppNumber, outcome: &Outcome, now: &Time) -> Result<bool> {
    let new_status = status::compute(wan, outcome, wan.status.as_ref(), now);
    if wan.status.as_ref() != Some(&new_status) {
        patch_status(ctx, wan, &new_status).await?;
        ctx.metrics.record_conditions(wan, &new_status.conditions);
        // Only a written status has news: a failed write is retried, and its
        // events come with the write that succeeds.
        for notice in events::transitions(wan.status.as_ref(), &new_status) {
            publish(ctx, wan, notice).await;
        }
        Ok(true)
    } else {
        // A restarted operator publishes what is already written.
        ctx.metrics.record_conditions(wan, &new_status.conditions);
        Ok(false)
    }
}

async fn patch_status(ctx: &Context, wan: &WhatsAppNumber, status: &WhatsAppNumberStatus) -> Result<()> {
    let api: Api<WhatsAppNumber> =
        Api::namespaced(ctx.client.clone(), &wan.namespace().ok_or(Error::MissingMetadata("namespace"))?);
    // The resource version makes the write conditional: status computed from
    // a stale copy (a cache behind a newer write, a replica that lost the
    // lead) is refused instead of moving an upgrade or a claim backwards.
    let patch = json!({
        "apiVersion": WhatsAppNumber::api_version(&()),
        "kind": WhatsAppNumber::kind(&()),
        "metadata": {"resourceVersion": wan.resource_version()},
        "status": status,
    });
    match api.patch_status(&wan.name_any(), &PatchParams::apply(FIELD_MANAGER).force(), &Patch::Apply(patch)).await {
        Ok(_) => {}
        Err(kube::Error::Api(s)) if s.code == 409 => return Err(Error::StaleObject),
        Err(e) => {
            let what = format!("writing the status of {}/{}", wan.namespace().unwrap_or_default(), wan.name_any());
            return Err(Error::request(what)(e));
        }
    }
    ctx.metrics.record_write("WhatsAppNumber", "apply-status");
    Ok(())
}
