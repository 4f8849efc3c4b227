//! Prometheus metrics of the operator process.

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, AtomicU64};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::text::encode;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use crate::interned::Word;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabels {
    pub reason: String,
}

/// One WhatsAppNumber.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct NumberLabels {
    pub namespace: Arc<str>,
    pub name: Arc<str>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BuildLabels {
    pub version: String,
    pub revision: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct WriteLabels {
    pub kind: String,
    pub verb: String,
}

/// Every metric the operator exports, registered once at start-up.
pub struct Metrics {
    registry: Registry,
    pub reconciles: Counter,
    pub reconcile_errors: Family<ErrorLabels, Counter>,
    pub reconcile_duration: Histogram,
    /// Successful write requests to the API server, by kind and verb. A
    /// reconcile that finds everything as it should be adds nothing here.
    pub writes: Family<WriteLabels, Counter>,
    pub leader: Gauge<i64, AtomicI64>,
    /// Bytes of heap in use, and freed but kept by the allocator, after the
    /// last trim (see [`crate::heap`]).
    pub heap_in_use: Gauge<i64, AtomicI64>,
    pub heap_free: Gauge<i64, AtomicI64>,
    /// Per number: coreapps connected to WhatsApp's servers.
    pub connected_coreapps: Family<NumberLabels, Gauge<i64, AtomicI64>>,
    /// Per number: 1 while health is judged good.
    pub gateway_up: Family<NumberLabels, Gauge<i64, AtomicI64>>,
    /// Per number: durations of `/v1/health` calls.
    pub probe_duration: Family<NumberLabels, Histogram>,
    /// Per number: Unix time of the last probe.
    pub probe_timestamp: Family<NumberLabels, Gauge<f64, AtomicU64>>,
    /// Per number: Unix time at which the running build expires.
    pub build_expiry: Family<NumberLabels, Gauge<f64, AtomicU64>>,
    /// Per number: Unix time of the last successful backup.
    pub backup_success: Family<NumberLabels, Gauge<f64, AtomicU64>>,
    /// Per number: 1 while another installation of the operator manages it
    /// (two installations watch its namespace).
    pub managed_elsewhere: Family<NumberLabels, Gauge<i64, AtomicI64>>,
    /// Per number and condition type: 1 for the status and reason last written.
    conditions: Arc<ConditionSeries>,
}

/// One condition of one number as last written: its type, status and reason.
#[derive(Debug)]
struct ConditionWords {
    type_: Word,
    status: Word,
    reason: Word,
}

/// `number_condition`: each number's conditions as last written, one series
/// each. A collector rather than a family of gauges: a family would keep a
/// label set and a gauge per condition, and replacing a series on a change
/// would need the old label set kept beside it; this keeps the three words
/// of each condition (shared with the conditions themselves) and makes the
/// label sets at a scrape.
#[derive(Debug, Default)]
struct ConditionSeries {
    by_number: Mutex<HashMap<NumberLabels, Box<[ConditionWords]>>>,
}

impl ConditionSeries {
    fn numbers(&self) -> std::sync::MutexGuard<'_, HashMap<NumberLabels, Box<[ConditionWords]>>> {
        self.by_number.lock().expect("condition series lock")
    }
}

impl Collector for ConditionSeries {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let numbers = self.numbers();
        let mut family = encoder.encode_descriptor(
            "number_condition",
            "1 for each WhatsAppNumber condition with the status and reason last written",
            None,
            MetricType::Gauge,
        )?;
        for (number, conditions) in numbers.iter() {
            for c in conditions {
                let labels = [
                    ("namespace", &*number.namespace),
                    ("name", &*number.name),
                    ("type", c.type_.as_str()),
                    ("status", c.status.as_str()),
                    ("reason", c.reason.as_str()),
                ];
                family.encode_family(&labels)?.encode_gauge(&1_i64)?;
            }
        }
        Ok(())
    }
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("whatsapp_operator");
        let reconciles = Counter::default();
        let reconcile_errors = Family::<ErrorLabels, Counter>::default();
        let reconcile_duration = Histogram::new([0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0]);
        let writes = Family::<WriteLabels, Counter>::default();
        let leader = Gauge::<i64, AtomicI64>::default();
        let connected_coreapps = Family::<NumberLabels, Gauge<i64, AtomicI64>>::default();
        let gateway_up = Family::<NumberLabels, Gauge<i64, AtomicI64>>::default();
        let probe_duration = Family::<NumberLabels, Histogram>::new_with_constructor(|| {
            Histogram::new([0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0])
        });
        let conditions = Arc::new(ConditionSeries::default());
        let backup_success = Family::<NumberLabels, Gauge<f64, AtomicU64>>::default();
        let build_info = Family::<BuildLabels, Gauge<i64, AtomicI64>>::default();
        build_info
            .get_or_create(&BuildLabels {
                version: env!("CARGO_PKG_VERSION").into(),
                revision: option_env!("WAO_GIT_REVISION").unwrap_or("unknown").into(),
            })
            .set(1);
        let probe_timestamp = Family::<NumberLabels, Gauge<f64, AtomicU64>>::default();
        let build_expiry = Family::<NumberLabels, Gauge<f64, AtomicU64>>::default();
        registry.register("reconciles", "Reconciles started", reconciles.clone());
        registry.register("reconcile_errors", "Reconciles that failed, by reason", reconcile_errors.clone());
        registry.register_with_unit(
            "reconcile_duration",
            "Time one reconcile took",
            prometheus_client::registry::Unit::Seconds,
            reconcile_duration.clone(),
        );
        registry.register("kube_writes", "Write requests sent to the Kubernetes API, by kind and verb", writes.clone());
        registry.register("leader", "1 while this replica holds the leader lease", leader.clone());
        let heap_in_use = Gauge::<i64, AtomicI64>::default();
        let heap_free = Gauge::<i64, AtomicI64>::default();
        registry.register_with_unit(
            "heap_in_use",
            "Heap bytes in use after the last trim, where the allocator tells it",
            prometheus_client::registry::Unit::Bytes,
            heap_in_use.clone(),
        );
        registry.register_with_unit(
            "heap_free",
            "Heap bytes freed but kept by the allocator after the last trim, where it tells it",
            prometheus_client::registry::Unit::Bytes,
            heap_free.clone(),
        );
        registry.register(
            "number_connected_coreapps",
            "Coreapps connected to WhatsApp's servers, per WhatsAppNumber",
            connected_coreapps.clone(),
        );
        registry.register("number_gateway_up", "1 while a WhatsAppNumber's gateway is healthy", gateway_up.clone());
        registry.register_with_unit(
            "health_probe_duration",
            "Duration of /v1/health calls, per WhatsAppNumber",
            prometheus_client::registry::Unit::Seconds,
            probe_duration.clone(),
        );
        registry.register(
            "health_probe_timestamp_seconds",
            "Unix time of the last /v1/health probe, per WhatsAppNumber",
            probe_timestamp.clone(),
        );
        registry.register_collector(Box::new(conditions.clone()));
        registry.register(
            "number_backup_last_success_timestamp_seconds",
            "Unix time of the last successful backup, per WhatsAppNumber",
            backup_success.clone(),
        );
        let managed_elsewhere = Family::<NumberLabels, Gauge<i64, AtomicI64>>::default();
        registry.register(
            "number_managed_elsewhere",
            "1 while another installation of the operator manages a WhatsAppNumber this one also watches",
            managed_elsewhere.clone(),
        );
        registry.register("build_info", "The operator's version and source revision", build_info);
        registry.register(
            "build_expiry_timestamp_seconds",
            "Unix time at which the running build expires, per WhatsAppNumber",
            build_expiry.clone(),
        );
        Self {
            registry,
            reconciles,
            reconcile_errors,
            reconcile_duration,
            writes,
            leader,
            heap_in_use,
            heap_free,
            connected_coreapps,
            gateway_up,
            probe_duration,
            probe_timestamp,
            build_expiry,
            conditions,
            backup_success,
            managed_elsewhere,
        }
    }
}

impl Metrics {
    /// What the heap holds after a trim.
    pub fn record_heap(&self, usage: crate::heap::Usage) {
        self.heap_in_use.set(i64::try_from(usage.in_use).unwrap_or(i64::MAX));
        self.heap_free.set(i64::try_from(usage.free).unwrap_or(i64::MAX));
    }

    pub fn record_error(&self, reason: &str) {
        self.reconcile_errors.get_or_create(&ErrorLabels { reason: reason.into() }).inc();
    }

    pub fn record_write(&self, kind: &str, verb: &str) {
        self.writes.get_or_create(&WriteLabels { kind: kind.into(), verb: verb.into() }).inc();
    }

    pub fn observe_duration(&self, elapsed: Duration) {
        self.reconcile_duration.observe(elapsed.as_secs_f64());
    }

    pub fn number(&self, wan: &crate::api::WhatsAppNumber) -> NumberLabels {
        use kube::ResourceExt;
        NumberLabels { namespace: wan.namespace().unwrap_or_default().into(), name: wan.name_any().into() }
    }

    /// Publishes the conditions of a status: one series per type, replaced
    /// when its status or reason changes, gone with the condition.
    pub fn record_conditions(&self, wan: &crate::api::WhatsAppNumber, conditions: &[crate::api::Condition]) {
        let now: Box<[ConditionWords]> = conditions
            .iter()
            .map(|c| ConditionWords { type_: c.type_.clone(), status: c.status.clone(), reason: c.reason.clone() })
            .collect();
        self.conditions.numbers().insert(self.number(wan), now);
    }

    /// Drops a deleted WhatsAppNumber's series.
    pub fn forget(&self, wan: &crate::api::WhatsAppNumber) {
        let labels = self.number(wan);
        self.conditions.numbers().remove(&labels);
        self.connected_coreapps.remove(&labels);
        self.backup_success.remove(&labels);
        self.managed_elsewhere.remove(&labels);
        self.gateway_up.remove(&labels);
        self.probe_duration.remove(&labels);
        self.probe_timestamp.remove(&labels);
        self.build_expiry.remove(&labels);
    }

    /// The running build's expiry as status shows it; none known, no series.
    pub fn record_build(&self, wan: &crate::api::WhatsAppNumber, build: Option<&crate::api::BuildStatus>) {
        let labels = self.number(wan);
        let expiry = build
            .and_then(|b| b.expires_at.as_deref())
            .and_then(|d| d.parse::<jiff::civil::Date>().ok())
            .and_then(|d| d.to_zoned(jiff::tz::TimeZone::UTC).ok());
        match expiry {
            Some(z) => {
                self.build_expiry.get_or_create(&labels).set(z.timestamp().as_second() as f64);
            }
            None => {
                self.build_expiry.remove(&labels);
            }
        }
    }

    /// The OpenMetrics text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        encode(&mut out, &self.registry).expect("writing to a String cannot fail");
        out
    }
}

#[cfg(test)]
mod tests {
    use crate::api::Condition;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

    use super::*;

    fn condition(type_: &str, status: &str, reason: &str) -> Condition {
        Condition {
            type_: type_.into(),
            status: status.into(),
            reason: reason.into(),
            message: "".into(),
            observed_generation: None,
            last_transition_time: Time(jiff::Timestamp::UNIX_EPOCH),
        }
    }

    #[test]
    fn a_condition_has_one_series_that_follows_its_status() {
        let m = Metrics::default();
        let wan = crate::fixtures::sample();
        m.record_conditions(&wan, &[condition("Ready", "False", "RollingOut")]);
        m.record_conditions(&wan, &[condition("Ready", "True", "Ready")]);
        let text = m.encode();
        let series: Vec<&str> = text.lines().filter(|l| l.starts_with("whatsapp_operator_number_condition{")).collect();
        assert_eq!(series.len(), 1, "{series:?}");
        assert!(series[0].contains(r#"type="Ready",status="True",reason="Ready""#), "{}", series[0]);
        assert!(text.contains("whatsapp_operator_build_info{"), "build_info is exported");
        m.forget(&wan);
        assert!(!m.encode().contains("whatsapp_operator_number_condition{"));
    }

    #[test]
    fn a_condition_that_goes_away_takes_its_series_along() {
        let m = Metrics::default();
        let wan = crate::fixtures::sample();
        m.record_conditions(
            &wan,
            &[condition("Ready", "False", "RollingOut"), condition("Deleting", "True", "Deleting")],
        );
        m.record_conditions(&wan, &[condition("Ready", "False", "RollingOut")]);
        let text = m.encode();
        let series: Vec<&str> = text.lines().filter(|l| l.starts_with("whatsapp_operator_number_condition{")).collect();
        assert_eq!(series.len(), 1, "{series:?}");
        assert!(series[0].contains(r#"type="Ready""#), "{}", series[0]);
    }

    #[test]
    fn numbers_share_the_words_of_their_conditions() {
        let m = Metrics::default();
        let (a, mut b) = (crate::fixtures::sample(), crate::fixtures::sample());
        b.metadata.name = Some("other".into());
        let conditions = [condition("Ready", "True", "Ready"), condition("Stalled", "False", "Ready")];
        for wan in [&a, &b] {
            m.record_conditions(wan, &conditions);
        }
        let numbers = m.conditions.numbers();
        let (ready_a, ready_b) = (&numbers[&m.number(&a)][0], &numbers[&m.number(&b)][0]);
        assert!(Arc::ptr_eq(&ready_a.type_.shared(), &ready_b.type_.shared()));
        assert!(Arc::ptr_eq(&ready_a.reason.shared(), &conditions[0].reason.shared()), "the condition's own copy");
        drop(numbers);
        let text = m.encode();
        let series: Vec<&str> = text.lines().filter(|l| l.starts_with("whatsapp_operator_number_condition{")).collect();
        assert_eq!(series.len(), 4, "{series:?}");
        assert!(
            series.contains(
                &r#"whatsapp_operator_number_condition{namespace="team",name="other",type="Stalled",status="False",reason="Ready"} 1"#
            ),
            "{series:?}"
        );
        assert!(text.contains("# TYPE whatsapp_operator_number_condition gauge"), "{text}");
    }
}
