//! The last step of a reconcile: the status, when it changed, with the
//! events and metrics of what changed.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::api::events::v1::Event as K8sEvent;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta, Time};
use kube::api::{Patch, PatchParams, PostParams};
use kube::runtime::events::{Event, EventType, Reporter};
use kube::{Api, Client, Resource, ResourceExt};
use serde_json::json;
use tracing::warn;

use super::error::{Error, Result};
use super::status::{self, Outcome};
use super::{Context, events};
use crate::api::{WhatsAppNumber, WhatsAppNumberStatus};
use crate::interned::intern;
use crate::resources::names::FIELD_MANAGER;

/// How long a repeated event joins the series of the one before it, after
/// that series was last observed: kube-runtime's recorder's window.
const SERIES_WINDOW: Duration = Duration::from_secs(6 * 60);

/// The operator's events (`events.k8s.io/v1`), published as kube-runtime's
/// [`kube::runtime::events::Recorder`] publishes them: a repeat of an event
/// (the same number, type, action and reason) within [`SERIES_WINDOW`]
/// extends the series of the first one (its count and last observed time)
/// instead of making another event.
///
/// That recorder keeps every event it published whole for the window, about
/// 2.9 KB each: some 8.7 KB for each number created, a quarter of the
/// operator's heap right after a thousand numbers were created at once.
/// What a series needs is the first event's name and the count, which is
/// all this keeps; series that can no longer grow are dropped at each
/// publish and by [`Events::renew`].
pub struct Events {
    client: Client,
    reporter: Reporter,
    series: Mutex<HashMap<SeriesKey, Series>>,
}

/// What makes a repeat of an event.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct SeriesKey {
    /// The uid of the object the event is about (its namespace and name
    /// when it has none).
    regarding: Box<str>,
    type_: EventType,
    action: Arc<str>,
    reason: Arc<str>,
}

/// A series: the event that began it, and how often it was seen.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Series {
    namespace: Arc<str>,
    name: Box<str>,
    count: i32,
    last: Instant,
}

impl SeriesKey {
    fn of(event: &Event, regarding: &ObjectReference) -> Self {
        let regarding = match &regarding.uid {
            Some(uid) => uid.as_str().into(),
            None => format!(
                "{}/{}",
                regarding.namespace.as_deref().unwrap_or_default(),
                regarding.name.as_deref().unwrap_or_default()
            )
            .into(),
        };
        Self { regarding, type_: event.type_, action: intern(&event.action), reason: intern(&event.reason) }
    }
}

impl Events {
    pub fn new(client: Client, reporter: Reporter) -> Self {
        Self { client, reporter, series: Mutex::default() }
    }

    pub async fn publish(&self, event: &Event, regarding: &ObjectReference) -> kube::Result<()> {
        let now = Instant::now();
        let key = SeriesKey::of(event, regarding);
        let known = {
            let mut series = self.series.lock().expect("event series lock");
            series.retain(|_, s| !expired(s.last, now));
            series.get(&key).cloned()
        };
        let namespace = regarding.namespace.as_deref().unwrap_or("default");
        let api: Api<K8sEvent> = Api::namespaced(self.client.clone(), namespace);
        if let Some(known) = known {
            let count = known.count.saturating_add(1);
            let observed = MicroTime(k8s_openapi::jiff::Timestamp::now());
            let patch = json!({"series": {"count": count, "lastObservedTime": observed}});
            match api.patch(&known.name, &PatchParams::default(), &Patch::Merge(&patch)).await {
                Ok(_) => {
                    let series = Series { count, last: now, ..known };
                    self.series.lock().expect("event series lock").insert(key, series);
                    return Ok(());
                }
                // Gone meanwhile (the API server keeps events an hour): a new series.
                Err(kube::Error::Api(s)) if s.code == 404 => {}
                Err(e) => return Err(e),
            }
        }
        let created = api.create(&PostParams::default(), &self.event(event, regarding)).await?;
        let series = Series { namespace: intern(namespace), name: created.name_any().into(), count: 1, last: now };
        self.series.lock().expect("event series lock").insert(key, series);
        Ok(())
    }

    /// A new event, as kube-runtime's recorder makes it.
    fn event(&self, event: &Event, regarding: &ObjectReference) -> K8sEvent {
        let now = k8s_openapi::jiff::Timestamp::now();
        let controller = &self.reporter.controller;
        K8sEvent {
            metadata: ObjectMeta {
                namespace: regarding.namespace.clone(),
                name: Some(format!("{}.{:x}", regarding.name.as_deref().unwrap_or(controller), now.as_nanosecond())),
                ..Default::default()
            },
            action: Some(event.action.clone()),
            reason: Some(event.reason.clone()),
            note: event.note.clone(),
            event_time: Some(MicroTime(now)),
            regarding: Some(regarding.clone()),
            related: event.secondary.clone(),
            reporting_controller: Some(controller.clone()),
            reporting_instance: Some(self.reporter.instance.clone().unwrap_or_else(|| controller.clone())),
            type_: Some(match event.type_ {
                EventType::Normal => "Normal".into(),
                EventType::Warning => "Warning".into(),
            }),
            ..Default::default()
        }
    }

    /// Drops the series that can no longer grow, and once none is left
    /// gives back the room the table grew to. Returns whether it did that.
    pub fn renew(&self, now: Instant) -> bool {
        let mut series = self.series.lock().expect("event series lock");
        series.retain(|_, s| !expired(s.last, now));
        if !series.is_empty() || series.capacity() == 0 {
            return false;
        }
        *series = HashMap::new();
        true
    }

    /// The series kept now: each one's event name and count.
    #[cfg(test)]
    pub(super) fn series(&self) -> Vec<(String, i32)> {
        let series = self.series.lock().expect("event series lock");
        series.values().map(|s| (format!("{}/{}", s.namespace, s.name), s.count)).collect()
    }
}

/// Whether a series last observed at `last` can no longer grow at `now`.
fn expired(last: Instant, now: Instant) -> bool {
    now.saturating_duration_since(last) >= SERIES_WINDOW
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
    /// Only progress moved, right after a write: held back for this long.
    Held(Duration),
}

/// Writes the status for `outcome` if it differs from the stored one, with
/// the events and metrics of what changed. A change that can wait (see
/// [`status::hold`]) is held back while the last write is recent, so that
/// the steps of a rollout and pods becoming ready one after another cost one
/// write.
pub async fn publish_status(ctx: &Context, wan: &WhatsAppNumber, outcome: &Outcome, now: &Time) -> Result<Published> {
    let new_status = status::compute(wan, outcome, wan.status.as_ref(), now);
    let trouble = status::trouble(outcome);
    ctx.metrics.record_build(wan, new_status.build.as_ref());
    if let Some(old) = wan.status.as_ref() {
        if *old == new_status {
            // A restarted operator publishes what is already written.
            ctx.metrics.record_conditions(wan, &new_status.conditions);
            return Ok(Published::Unchanged);
        }
        // Only this operator's own writes are held back (a restarted one
        // has none): the trouble its last write showed is known then.
        if let Some((since, shown)) = ctx.last_status_write(wan) {
            let settle = status::hold(old, &new_status, shown != trouble);
            if let Some(wait) = settle.and_then(|settle| settle.checked_sub(since)) {
                tracing::debug!(?wait, "holding a status write that only shows progress");
                return Ok(Published::Held(wait));
            }
        }
    }
    write(ctx, wan, new_status, trouble).await
}

async fn write(
    ctx: &Context,
    wan: &WhatsAppNumber,
    new_status: WhatsAppNumberStatus,
    trouble: Option<u64>,
) -> Result<Published> {
    tracing::debug!(changed = ?changed_fields(wan.status.as_ref(), &new_status), "writing the status");
    patch_status(ctx, wan, &new_status).await?;
    ctx.status_written(wan, trouble);
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
    let patch = status_apply(wan.resource_version(), status);
    match api.patch_status(&wan.name_any(), &PatchParams::apply(FIELD_MANAGER).force(), &Patch::Apply(patch)).await {
        Ok(_) => {}
        Err(kube::Error::Api(s)) if s.code == 409 => {
            keep_call_records(ctx, &api, wan, status).await;
            return Err(Error::StaleObject);
        }
        Err(e) => {
            let what = format!("writing the status of {}/{}", wan.namespace().unwrap_or_default(), wan.name_any());
            return Err(Error::request(what)(e));
        }
    }
    ctx.metrics.record_write("WhatsAppNumber", "apply-status");
    Ok(())
}

/// The body of a status apply, conditional on `resource_version`.
fn status_apply(resource_version: Option<String>, status: &WhatsAppNumberStatus) -> serde_json::Value {
    json!({
        "apiVersion": WhatsAppNumber::api_version(&()),
        "kind": WhatsAppNumber::kind(&()),
        "metadata": {"resourceVersion": resource_version},
        "status": status,
    })
}

/// The calls a reconcile made to the client happened even when its status
/// write is refused as stale: their records go onto the object as it is now
/// (read again, written with its resource version by the same field
/// manager), or the retry from the newer object would make the calls again.
async fn keep_call_records(ctx: &Context, api: &Api<WhatsAppNumber>, wan: &WhatsAppNumber, new: &WhatsAppNumberStatus) {
    let old = wan.status.as_ref();
    if with_call_records(old, new, old).is_none() {
        return;
    }
    let name = wan.name_any();
    // The object itself: the operator's role may read it, not its status subresource.
    let fresh = match api.get(&name).await {
        Ok(fresh) => fresh,
        Err(e) => return warn!(error = %e, "the records of calls to the client could not be kept: reading the object"),
    };
    let Some(kept) = with_call_records(old, new, fresh.status.as_ref()) else { return };
    let patch = status_apply(fresh.resource_version(), &kept);
    match api.patch_status(&name, &PatchParams::apply(FIELD_MANAGER).force(), &Patch::Apply(patch)).await {
        Ok(_) => {
            ctx.metrics.record_write("WhatsAppNumber", "apply-status");
            warn!("the status was stale; the records of calls to the client were written onto the newer object");
        }
        Err(e) => warn!(error = %e, "the records of calls to the client could not be kept"),
    }
}

/// Status fields that record calls made to the client: a shard request, a
/// code request or verification, a restore, a certificate upload, a backup,
/// settings written, and the registration time they lead to.
const CALL_RECORDS: [&str; 7] =
    ["sharding", "registration", "restore", "webappCertificate", "backup", "settings", "registeredAt"];

/// `stored` with the call records this reconcile changed (from `old` to
/// `new`), where `stored` still has them as `old` had them: one written
/// since is newer and stays. `None` when no record is to be written.
pub fn with_call_records(
    old: Option<&WhatsAppNumberStatus>,
    new: &WhatsAppNumberStatus,
    stored: Option<&WhatsAppNumberStatus>,
) -> Option<WhatsAppNumberStatus> {
    let value = |s: Option<&WhatsAppNumberStatus>| serde_json::to_value(s.cloned().unwrap_or_default()).ok();
    let (old, new, mut kept) = (value(old)?, value(Some(new))?, value(stored)?);
    let mut any = false;
    for field in CALL_RECORDS {
        if old.get(field) != new.get(field) && kept.get(field) == old.get(field) {
            let target = kept.as_object_mut()?;
            match new.get(field) {
                Some(v) => target.insert(field.to_string(), v.clone()),
                None => target.remove(field),
            };
            any = true;
        }
    }
    any.then(|| serde_json::from_value(kept).ok()).flatten()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stale_write_keeps_the_records_of_its_calls_and_nothing_older() {
        use crate::api::{RestoreOutcome, RestoreStatus, ShardRequestOutcome, ShardRequestStatus, ShardingStatus};
        let at = Time("2026-01-01T00:00:00Z".parse().unwrap());
        let old = WhatsAppNumberStatus {
            observed_generation: Some(3),
            registered_at: Some(at.clone()),
            restore: Some(Box::new(RestoreStatus {
                outcome: RestoreOutcome::Restored,
                from: "backup".into(),
                at: at.clone(),
                message: String::new(),
            })),
            ..Default::default()
        };
        assert_eq!(with_call_records(Some(&old), &old, Some(&old)), None, "no call, nothing to keep");
        let progress_only = WhatsAppNumberStatus { observed_generation: Some(4), ..old.clone() };
        assert_eq!(with_call_records(Some(&old), &progress_only, Some(&old)), None, "the rest waits");

        let request = ShardRequestStatus {
            shards: 2,
            generation: 4,
            at: at.clone(),
            outcome: ShardRequestOutcome::Unanswered,
            message: "timed out".into(),
            request_digest: Some("inputs".into()),
            retry_annotation: None,
        };
        let called = WhatsAppNumberStatus {
            observed_generation: Some(4),
            sharding: Some(ShardingStatus { last_request: Some(request), ..Default::default() }),
            registered_at: None,
            ..old.clone()
        };
        // Stored as the stale copy had it, but for a newer observation.
        let stored = WhatsAppNumberStatus { observed_generation: Some(3), ..old.clone() };
        let kept = with_call_records(Some(&old), &called, Some(&stored)).expect("a shard request was made");
        assert_eq!(kept.sharding, called.sharding, "the request's record");
        assert_eq!(kept.registered_at, None, "a cleared record is cleared");
        assert_eq!(kept.observed_generation, Some(3), "everything else as stored");
        assert_eq!(kept.restore, old.restore);

        // A record written since the stale copy was read is newer: it stays.
        let newer =
            WhatsAppNumberStatus { registered_at: Some(Time("2026-02-01T00:00:00Z".parse().unwrap())), ..stored };
        let kept = with_call_records(Some(&old), &called, Some(&newer)).expect("the shard request still");
        assert_eq!(kept.registered_at, newer.registered_at);
        assert_eq!(kept.sharding, called.sharding);
    }

    #[test]
    fn a_series_can_grow_for_six_minutes_after_it_was_last_observed() {
        let start = Instant::now();
        assert!(!expired(start, start), "an event just published may still repeat");
        assert!(!expired(start, start + Duration::from_secs(6 * 60 - 1)));
        assert!(expired(start, start + SERIES_WINDOW), "kube-runtime's own window");
        assert!(expired(start, start + SERIES_WINDOW * 3));
        assert!(!expired(start + SERIES_WINDOW, start), "a clock read before the publish");
    }

    #[test]
    fn repeats_of_an_event_are_told_by_object_type_action_and_reason() {
        let event = |reason: &str, note: &str| Event {
            type_: EventType::Normal,
            reason: reason.into(),
            note: Some(note.into()),
            action: "Reconcile".into(),
            secondary: None,
        };
        let acme = ObjectReference {
            namespace: Some("team".into()),
            name: Some("acme".into()),
            uid: Some("u1".into()),
            ..Default::default()
        };
        let key = SeriesKey::of(&event("Ready", "all ready"), &acme);
        assert_eq!(key, SeriesKey::of(&event("Ready", "another note"), &acme), "the note is no part of it");
        assert_ne!(key, SeriesKey::of(&event("RollingOut", "all ready"), &acme));
        let recreated = ObjectReference { uid: Some("u2".into()), ..acme.clone() };
        assert_ne!(key, SeriesKey::of(&event("Ready", "all ready"), &recreated), "another object of that name");
        let warning = Event { type_: EventType::Warning, ..event("Ready", "all ready") };
        assert_ne!(key, SeriesKey::of(&warning, &acme));
        let (a, b) = (SeriesKey::of(&event("Ready", "x"), &acme), SeriesKey::of(&event("Ready", "y"), &recreated));
        assert!(Arc::ptr_eq(&a.reason, &b.reason), "a reason is kept once for every number");
    }
}
