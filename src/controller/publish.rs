//! The last step of a reconcile: the status, when it changed, with the
//! events and metrics of what changed.

use std::time::Duration;

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

/// What [`publish_status`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Published {
    /// The status was as computed: nothing written.
    Unchanged,
    Written,
    /// Only pod counts or messages moved, right after a write: held back for
    /// this long, so that pods becoming ready one after another cost one
    /// write.
    Held(Duration),
}

/// How long a change of pod counts or messages alone waits after a status
/// write for more of them.
pub const PROGRESS_SETTLE: Duration = Duration::from_secs(5);

/// Writes the status for `outcome` if it differs from the stored one, with
/// the events and metrics of what changed.
pub async fn publish_status(ctx: &Context, wan: &WhatsAppNumber, outcome: &Outcome, now: &Time) -> Result<Published> {
    let new_status = status::compute(wan, outcome, wan.status.as_ref(), now);
    ctx.metrics.record_build(wan, new_status.build.as_ref());
    if let Some(old) = wan.status.as_ref() {
        if *old == new_status {
            // A restarted operator publishes what is already written.
            ctx.metrics.record_conditions(wan, &new_status.conditions);
            return Ok(Published::Unchanged);
        }
        let settling = ctx.since_status_write(wan).and_then(|since| PROGRESS_SETTLE.checked_sub(since));
        if let Some(wait) = settling.filter(|_| status::progress_only(old, &new_status)) {
            tracing::debug!(?wait, "holding a status write that only counts pods");
            return Ok(Published::Held(wait));
        }
    }
    write(ctx, wan, new_status).await
}

async fn write(ctx: &Context, wan: &WhatsAppNumber, new_status: WhatsAppNumberStatus) -> Result<Published> {
    tracing::debug!(changed = ?changed_fields(wan.status.as_ref(), &new_status), "writing the status");
    patch_status(ctx, wan, &new_status).await?;
    ctx.status_written(wan);
    ctx.metrics.record_conditions(wan, &new_status.conditions);
    // Only a written status has news: a failed write is retried, and its
    // events come with the write that succeeds.
    for notice in events::transitions(wan.status.as_ref(), &new_status) {
        publish(ctx, wan, notice).await;
    }
    Ok(Published::Written)
}

/// The top-level status fields that differ, and the conditions that do (as
/// they are now): what a status write was for, in the debug log.
fn changed_fields(old: Option<&WhatsAppNumberStatus>, new: &WhatsAppNumberStatus) -> Vec<String> {
    let (old, new) = (serde_json::to_value(old).unwrap_or_default(), serde_json::to_value(new).unwrap_or_default());
    let Some(fields) = new.as_object() else { return vec![] };
    let mut changed: Vec<String> = fields
        .iter()
        .filter(|(k, v)| *k != "conditions" && old.get(k) != Some(v))
        .map(|(k, _)| k.clone())
        .chain(old.as_object().into_iter().flatten().filter(|(k, _)| !fields.contains_key(*k)).map(|(k, _)| k.clone()))
        .collect();
    let conditions = |v: &serde_json::Value| v["conditions"].as_array().cloned().unwrap_or_default();
    let before = conditions(&old);
    for c in conditions(&new) {
        if !before.contains(&c) {
            let text = |k: &str| c[k].as_str().unwrap_or_default().to_string();
            changed.push(format!(
                "conditions/{}={}/{}: {}",
                text("type"),
                text("status"),
                text("reason"),
                text("message")
            ));
        }
    }
    changed
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
