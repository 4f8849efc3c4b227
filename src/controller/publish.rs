//! The last step of a reconcile: the status, when it changed, with the
//! events and metrics of what changed.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{Patch, PatchParams};
use kube::runtime::events::{Event, Recorder, Reporter};
use kube::{Api, Client, Resource, ResourceExt};
use serde_json::json;
use tracing::warn;

use super::error::{Error, Result};
use super::status::{self, Outcome};
use super::{Context, events};
use crate::api::{WhatsAppNumber, WhatsAppNumberStatus};
use crate::resources::names::FIELD_MANAGER;

/// How long the event recorder folds a repeated event into a series of the
/// one before it: kube-runtime's window of six minutes, and a minute more.
const SERIES_WINDOW: Duration = Duration::from_secs(7 * 60);

/// The operator's events, published through kube-runtime's [`Recorder`].
///
/// The recorder keeps every event it published for its series window, in a
/// table that never gives back the room it once grew to: after a rollout of
/// many numbers the operator kept that room for as long as it ran. Once no
/// event was published for longer than the window, the recorder holds nothing
/// it could still use, and [`Events::renew`] replaces it with an empty one.
pub struct Events {
    client: Client,
    reporter: Reporter,
    current: Mutex<Current>,
}

struct Current {
    recorder: Recorder,
    /// When an event was last published through `recorder`; `None` while it
    /// has published nothing.
    last: Option<Instant>,
}

impl Events {
    pub fn new(client: Client, reporter: Reporter) -> Self {
        let recorder = Recorder::new(client.clone(), reporter.clone());
        Self { client, reporter, current: Mutex::new(Current { recorder, last: None }) }
    }

    pub async fn publish(
        &self,
        event: &Event,
        regarding: &k8s_openapi::api::core::v1::ObjectReference,
    ) -> kube::Result<()> {
        let recorder = {
            let mut current = self.current.lock().expect("events lock");
            current.last = Some(Instant::now());
            current.recorder.clone()
        };
        recorder.publish(event, regarding).await
    }

    /// Replaces the recorder with an empty one if its series have all expired.
    /// Returns whether it did.
    pub fn renew(&self, now: Instant) -> bool {
        let mut current = self.current.lock().expect("events lock");
        if !expired(current.last, now) {
            return false;
        }
        *current = Current { recorder: Recorder::new(self.client.clone(), self.reporter.clone()), last: None };
        true
    }
}

/// Whether a recorder that last published at `last` can no longer extend any
/// series at `now`.
fn expired(last: Option<Instant>, now: Instant) -> bool {
    last.is_some_and(|last| now.saturating_duration_since(last) >= SERIES_WINDOW)
}

pub async fn publish(ctx: &Context, wan: &WhatsAppNumber, notice: events::Notice) {
    let event = Event {
        type_: notice.type_,
        reason: notice.reason,
        note: Some(notice.note),
        action: "Reconcile".into(),
        secondary: None,
    };
    match ctx.events.publish(&event, &wan.object_ref(&())).await {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_recorder_is_renewed_only_once_its_last_series_can_no_longer_grow() {
        let start = Instant::now();
        assert!(!expired(None, start + SERIES_WINDOW * 2), "a recorder that published nothing holds nothing");
        assert!(!expired(Some(start), start), "an event just published may still repeat");
        assert!(!expired(Some(start), start + Duration::from_secs(6 * 60)), "kube-runtime's own window");
        assert!(expired(Some(start), start + SERIES_WINDOW));
        assert!(expired(Some(start), start + SERIES_WINDOW * 3));
        assert!(!expired(Some(start + SERIES_WINDOW), start), "a clock read before the publish");
    }
}
