//! Prometheus metrics of the operator process.

use std::sync::atomic::{AtomicI64, AtomicU64};
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabels {
    pub reason: String,
}

/// One WhatsAppNumber.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct NumberLabels {
    pub namespace: String,
    pub name: String,
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
    /// Per number: coreapps connected to WhatsApp's servers.
    pub connected_coreapps: Family<NumberLabels, Gauge<i64, AtomicI64>>,
    /// Per number: 1 while health is judged good.
    pub gateway_up: Family<NumberLabels, Gauge<i64, AtomicI64>>,
    /// Per number: duration of the last `/v1/health` call.
    pub probe_latency: Family<NumberLabels, Gauge<f64, AtomicU64>>,
    /// Per number: Unix time of the last probe.
    pub probe_timestamp: Family<NumberLabels, Gauge<f64, AtomicU64>>,
    /// Per number: Unix time at which the running build expires.
    pub build_expiry: Family<NumberLabels, Gauge<f64, AtomicU64>>,
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
        let probe_latency = Family::<NumberLabels, Gauge<f64, AtomicU64>>::default();
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
        registry.register(
            "number_connected_coreapps",
            "Coreapps connected to WhatsApp's servers, per WhatsAppNumber",
            connected_coreapps.clone(),
        );
        registry.register("number_gateway_up", "1 while a WhatsAppNumber's gateway is healthy", gateway_up.clone());
        registry.register_with_unit(
            "health_probe_latency",
            "Duration of the last /v1/health call, per WhatsAppNumber",
            prometheus_client::registry::Unit::Seconds,
            probe_latency.clone(),
        );
        registry.register(
            "health_probe_timestamp_seconds",
            "Unix time of the last /v1/health probe, per WhatsAppNumber",
            probe_timestamp.clone(),
        );
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
            connected_coreapps,
            gateway_up,
            probe_latency,
            probe_timestamp,
            build_expiry,
        }
    }
}

impl Metrics {
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
        NumberLabels { namespace: wan.namespace().unwrap_or_default(), name: wan.name_any() }
    }

    /// Drops a deleted WhatsAppNumber's series.
    pub fn forget(&self, wan: &crate::api::WhatsAppNumber) {
        let labels = self.number(wan);
        self.connected_coreapps.remove(&labels);
        self.gateway_up.remove(&labels);
        self.probe_latency.remove(&labels);
        self.probe_timestamp.remove(&labels);
        self.build_expiry.remove(&labels);
    }

    /// The OpenMetrics text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        encode(&mut out, &self.registry).expect("writing to a String cannot fail");
        out
    }
}
