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
    ctx.metrics.record_build(wan, new_status.build.as_ref());
    if let Some(old) = wan.status.as_ref() {
        if *old == new_status {
            // A restarted operator publishes what is already written.
            ctx.metrics.record_conditions(wan, &new_status.conditions);
            return Ok(Published::Unchanged);
        }
        let settle = status::hold(old, &new_status);
        let since = ctx.since_status_write(wan);
        if let Some(wait) = settle.zip(since).and_then(|(settle, since)| settle.checked_sub(since)) {
            tracing::debug!(?wait, "holding a status write that only shows progress");
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
        Err(kube::Error::Api(s)) if s.code == 409 => {
            // The calls this reconcile made to the client happened all the
            // same: their records go in on their own, or the retry from the
            // newer object would make them again.
            if let Some(records) = call_records(wan.status.as_ref(), status) {
                let params = PatchParams { field_manager: Some(FIELD_MANAGER.into()), ..Default::default() };
                match api.patch_status(&wan.name_any(), &params, &Patch::Merge(&records)).await {
                    Ok(_) => {
                        ctx.metrics.record_write("WhatsAppNumber", "patch-status");
                        warn!(records = %records, "the status was stale; wrote the records of calls to the client alone");
                    }
                    Err(e) => {
                        warn!(error = %e, "the status was stale, and the records of calls to the client could not be written")
                    }
                }
            }
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

/// Status fields that record calls made to the client: a shard request, a
/// code request or verification, a restore, a certificate upload, a backup,
/// settings written, and the registration time they lead to.
const CALL_RECORDS: [&str; 7] =
    ["sharding", "registration", "restore", "webappCertificate", "backup", "settings", "registeredAt"];

/// A merge patch of the call records that `new` changes from `old` (a field
/// gone is `null`), or `None` when it changes none.
pub fn call_records(old: Option<&WhatsAppNumberStatus>, new: &WhatsAppNumberStatus) -> Option<serde_json::Value> {
    let (old, new) = (serde_json::to_value(old).unwrap_or_default(), serde_json::to_value(new).unwrap_or_default());
    let changed: serde_json::Map<String, serde_json::Value> = CALL_RECORDS
        .iter()
        .filter(|field| old.get(**field) != new.get(**field))
        .map(|field| (field.to_string(), new.get(*field).cloned().unwrap_or(serde_json::Value::Null)))
        .collect();
    (!changed.is_empty()).then(|| json!({"status": changed}))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn call_records_of_a_stale_write_are_what_the_calls_changed() {
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
        assert_eq!(call_records(Some(&old), &old), None, "no call, nothing to keep");
        let progress_only = WhatsAppNumberStatus { observed_generation: Some(4), ..old.clone() };
        assert_eq!(call_records(Some(&old), &progress_only), None, "the rest waits for the next reconcile");

        let request = ShardRequestStatus {
            shards: 2,
            generation: 4,
            at: at.clone(),
            outcome: ShardRequestOutcome::Unanswered,
            message: "timed out".into(),
            request_digest: Some("inputs".into()),
        };
        let called = WhatsAppNumberStatus {
            observed_generation: Some(4),
            sharding: Some(ShardingStatus { last_request: Some(request), ..Default::default() }),
            registered_at: None,
            ..old.clone()
        };
        let records = call_records(Some(&old), &called).expect("a shard request was made");
        assert_eq!(records["status"]["sharding"]["lastRequest"]["outcome"], "Unanswered");
        assert_eq!(records["status"]["registeredAt"], serde_json::Value::Null, "a cleared record is cleared");
        let fields: Vec<&String> = records["status"].as_object().unwrap().keys().collect();
        assert_eq!(fields, ["registeredAt", "sharding"], "only the records that changed: {records}");
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
