//! Health probes off the reconcile path. One task probes every number's
//! webapp on the number's own interval, with bounded concurrency, jitter and
//! a deadline per probe, and keeps the latest result. A reconcile reads that
//! result and never waits on a webapp to learn its health; a result that
//! differs from the one before wakes the number's reconcile, one that changes
//! nothing wakes nothing.
//!
//! A probe only reads: `/v1/health` with the API key, then, with an admin
//! session, the shard count and (when the spec manages them) the application
//! settings. While a registered number is down it also reads the recent logs
//! of the number's masters and coreapps, where the client names a second
//! instance of the number (see [`crate::health::logs`]). Everything that
//! changes the client stays in the reconcile.
//!
//! With health polling off a number is still watched, to hold an admin
//! session: opening it moves the admin user off the client's default
//! password. Such a probe calls nothing but the login, and once the session
//! is open it looks again only every [`ADMIN_RECHECK`].

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use futures::channel::mpsc;
use futures::stream::FuturesUnordered;
use serde_json::Value;
use tokio::sync::Notify;
use tokio::time::Instant;

use crate::health::logs::{self, Conflict};
use crate::health::report::{self, Health};
use crate::telemetry::metrics::{Metrics, NumberLabels};
use crate::webapp::session::{SessionError, SessionKey, Sessions};
use crate::webapp::{CallError, Clients, Trust, Webapp};

/// A number: (namespace, name).
pub type Key = SessionKey;

/// How often a number whose health is not polled has its admin session
/// looked at once it is open: the cached session needs no call until it is
/// renewed, so this only bounds how late a renewal happens.
pub const ADMIN_RECHECK: Duration = Duration::from_secs(3600);

/// How to probe one number's webapp.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    /// Poll `/v1/health`; false: only hold the admin session.
    pub health: bool,
    pub url: String,
    pub trust: Trust,
    /// The name the webapp's certificate is made for, when it is not the
    /// host of `url` (`spec.webapp.serverName`).
    pub certificate_name: Option<String>,
    pub api_key: String,
    /// No admin calls while the password is not known.
    pub admin_password: Option<String>,
    /// Read `/v1/settings/application` too.
    pub read_settings: bool,
    /// Nothing to verify the webapp against yet: read only the client's own
    /// CA, over this unverified connection, for the reconcile to pin.
    pub pin_ca: bool,
    /// Per request.
    pub timeout: Duration,
    pub interval: Duration,
    /// The spec's shard count, for judging the gauges while the client's own
    /// count is unknown.
    pub shards: i32,
    /// The number's masters and coreapps, whose logs name a second instance.
    pub nodes: NodeLogs,
    pub labels: NumberLabels,
}

/// Where the logs of a number's masters and coreapps are.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NodeLogs {
    pub namespace: String,
    /// (pod, container), in a stable order.
    pub pods: Vec<(String, String)>,
}

/// The admin side of a probe.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Admin {
    /// The webapp did not answer, or no password is known.
    NotTried,
    Open,
    /// Neither the Secret's password nor the default one was accepted.
    Refused(String),
    Unavailable(String),
}

/// What one probe found. Compared whole to the one before: only a difference
/// wakes the reconcile.
#[derive(Clone, Debug, PartialEq)]
pub struct Probe {
    /// `None` when health is not polled.
    pub health: Option<Result<Health, String>>,
    pub admin: Admin,
    /// `None` while the client's shard count could not be read.
    pub shards: Option<i32>,
    pub settings: Option<Result<Value, String>>,
    /// The client's own CA, when the target asked for it.
    pub ca: Option<Vec<u8>>,
    /// A node that logged a second instance of the number; read only while
    /// the health shows the number down.
    pub conflict: Option<Conflict>,
}

impl Probe {
    fn unreachable(why: String) -> Self {
        Probe { health: Some(Err(why)), admin: Admin::NotTried, shards: None, settings: None, ca: None, conflict: None }
    }

    /// The verdict on this probe's health, the nodes' logs included; `None`
    /// when the webapp gave no health. `shards` stands in while the client's
    /// own count is unknown.
    pub fn verdict(&self, shards: i32) -> Option<report::Verdict> {
        let Some(Ok(health)) = &self.health else { return None };
        Some(logs::with_conflict(report::judge(health, self.shards.unwrap_or(shards)), self.conflict.as_ref()))
    }
}

/// The latest probe of a number's current target.
#[derive(Clone, Debug, PartialEq)]
pub struct Latest {
    pub probe: Probe,
    pub at: jiff::Timestamp,
}

struct Entry {
    target: Target,
    /// Bumped whenever the target changes, so that a probe of an older
    /// target is not taken for one of the current.
    version: u64,
    next: Instant,
    in_flight: bool,
    latest: Option<Latest>,
    /// When a probe last found the number healthy: what its nodes logged
    /// before is history (see [`logs::since`]). Kept across target changes.
    healthy_at: Option<jiff::Timestamp>,
}

/// The schedule, without I/O: which numbers are due, and what a finished
/// probe changes.
#[derive(Default)]
pub struct Schedule {
    entries: HashMap<Key, Entry>,
    versions: u64,
}

/// A probe to start.
#[derive(Debug)]
pub struct Due {
    pub key: Key,
    pub version: u64,
    pub target: Target,
    pub healthy_at: Option<jiff::Timestamp>,
}

impl Schedule {
    /// Sets a number's target. A new or changed target is probed at once and
    /// its old result is dropped; the same target changes nothing.
    pub fn watch(&mut self, key: &Key, target: Target, now: Instant) -> bool {
        if self.entries.get(key).is_some_and(|e| e.target == target) {
            return false;
        }
        self.versions += 1;
        let healthy_at = self.entries.get(key).and_then(|e| e.healthy_at);
        let entry = Entry { target, version: self.versions, next: now, in_flight: false, latest: None, healthy_at };
        self.entries.insert(key.clone(), entry);
        true
    }

    pub fn forget(&mut self, key: &Key) {
        self.entries.remove(key);
    }

    /// Drops the result and probes at once: the reconcile changed the client.
    pub fn refresh(&mut self, key: &Key, now: Instant) -> bool {
        let Some(entry) = self.entries.get_mut(key) else { return false };
        self.versions += 1;
        entry.version = self.versions;
        entry.latest = None;
        entry.next = now;
        true
    }

    pub fn latest(&self, key: &Key) -> Option<Latest> {
        self.entries.get(key)?.latest.clone()
    }

    /// Up to `free` due probes, earliest first, marked in flight, and when to
    /// look again: `None` while due probes wait for a free slot (a finished
    /// probe frees one) or nothing is scheduled.
    pub fn take_due(&mut self, now: Instant, free: usize) -> (Vec<Due>, Option<Instant>) {
        let mut due: Vec<(&Key, &mut Entry)> =
            self.entries.iter_mut().filter(|(_, e)| !e.in_flight && e.next <= now).collect();
        due.sort_by_key(|(_, e)| e.next);
        let waiting = due.len() > free;
        let started: Vec<Due> = due
            .into_iter()
            .take(free)
            .map(|(key, e)| {
                e.in_flight = true;
                Due { key: key.clone(), version: e.version, target: e.target.clone(), healthy_at: e.healthy_at }
            })
            .collect();
        let next = if waiting { None } else { self.entries.values().filter(|e| !e.in_flight).map(|e| e.next).min() };
        (started, next)
    }

    /// Records a finished probe and schedules the next one `delay` later.
    /// Returns whether the number's reconcile should look: the result differs
    /// from the one before. A probe of a forgotten or changed target is dropped.
    pub fn record(&mut self, key: &Key, version: u64, latest: Latest, now: Instant, delay: Duration) -> Recorded {
        let Some(entry) = self.entries.get_mut(key) else { return Recorded::Dropped };
        if entry.version != version {
            // The changed target's own probe is due already.
            entry.in_flight = false;
            return Recorded::Dropped;
        }
        entry.in_flight = false;
        entry.next = now + delay;
        if latest.probe.verdict(entry.target.shards).is_some_and(|v| v.healthy) {
            entry.healthy_at = Some(latest.at);
        }
        let changed = entry.latest.as_ref().is_none_or(|l| l.probe != latest.probe);
        entry.latest = Some(latest);
        if changed { Recorded::Changed } else { Recorded::Unchanged }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Recorded {
    Changed,
    Unchanged,
    Dropped,
}

/// The interval plus up to 10%, so that numbers created together spread out.
pub fn jittered(interval: Duration) -> Duration {
    use rand::Rng;
    interval + interval.mul_f64(rand::rng().random_range(0.0..0.1))
}

struct Shared {
    schedule: Mutex<Schedule>,
    wake: Notify,
    changes: mpsc::UnboundedSender<Key>,
    sessions: Arc<Sessions>,
    clients: Arc<Clients>,
    /// Reads the nodes' logs; `None`: they are not read.
    kube: Option<kube::Client>,
    metrics: Arc<Metrics>,
    concurrency: usize,
}

/// The probe scheduler's handle, shared by the reconciles.
#[derive(Clone)]
pub struct Probes(Arc<Shared>);

impl Probes {
    /// The scheduler and the stream of numbers whose probe result changed.
    /// Nothing is probed until [`Probes::run`] runs.
    pub fn new(
        concurrency: usize,
        sessions: Arc<Sessions>,
        clients: Arc<Clients>,
        kube: Option<kube::Client>,
        metrics: Arc<Metrics>,
    ) -> (Self, mpsc::UnboundedReceiver<Key>) {
        let (changes, receiver) = mpsc::unbounded();
        let shared = Shared {
            schedule: Mutex::default(),
            wake: Notify::new(),
            changes,
            sessions,
            clients,
            kube,
            metrics,
            concurrency: concurrency.max(1),
        };
        (Self(Arc::new(shared)), receiver)
    }

    /// The admin sessions the probes open, for the reconciles' own calls.
    pub fn sessions(&self) -> &Sessions {
        &self.0.sessions
    }

    /// The HTTP clients the probes use, for the reconciles' own calls.
    pub fn clients(&self) -> &Clients {
        &self.0.clients
    }

    fn schedule(&self) -> std::sync::MutexGuard<'_, Schedule> {
        self.0.schedule.lock().expect("probe schedule lock")
    }

    /// Probes `key` as `target` says from now on.
    /// Probes `key` with `target` from now on; true when that is new (a first
    /// target, or other settings than before).
    pub fn watch(&self, key: &Key, target: Target) -> bool {
        let new = self.schedule().watch(key, target, Instant::now());
        if new {
            self.0.wake.notify_one();
        }
        new
    }

    /// Stops probing `key`.
    pub fn forget(&self, key: &Key) {
        self.schedule().forget(key);
    }

    /// Probes `key` again at once, its last result no longer current.
    pub fn refresh(&self, key: &Key) {
        if self.schedule().refresh(key, Instant::now()) {
            self.0.wake.notify_one();
        }
    }

    /// The latest result for `key`'s current target; `None` until its first probe.
    pub fn latest(&self, key: &Key) -> Option<Latest> {
        self.schedule().latest(key)
    }

    /// Probes until dropped.
    pub async fn run(self) {
        let mut running = FuturesUnordered::new();
        loop {
            let now = Instant::now();
            let free = self.0.concurrency.saturating_sub(running.len());
            let (due, next) = self.schedule().take_due(now, free);
            for d in due {
                running.push(probe(self.0.clone(), d));
            }
            // Nothing scheduled: sleep until a number is watched.
            let sleep = tokio::time::sleep_until(next.unwrap_or(now + Duration::from_secs(3600)));
            tokio::select! {
                _ = sleep => {}
                _ = self.0.wake.notified() => {}
                Some((due, latest, latency)) = running.next(), if !running.is_empty() => {
                    self.finished(due, latest, latency);
                }
            }
        }
    }

    fn finished(&self, due: Due, latest: Latest, latency: Option<Duration>) {
        let recorded = self.schedule().record(
            &due.key,
            due.version,
            latest.clone(),
            Instant::now(),
            jittered(next_interval(&due.target, &latest.probe)),
        );
        if recorded == Recorded::Dropped {
            return;
        }
        if recorded == Recorded::Changed {
            // The receiver is gone only when the controller stopped.
            let _ = self.0.changes.unbounded_send(due.key.clone());
        }
        if !due.target.health {
            return;
        }
        let (m, labels) = (&self.0.metrics, &due.target.labels);
        if let Some(latency) = latency {
            m.probe_duration.get_or_create(labels).observe(latency.as_secs_f64());
        }
        m.probe_timestamp.get_or_create(labels).set(latest.at.as_second() as f64);
        let verdict = latest.probe.verdict(due.target.shards);
        m.gateway_up.get_or_create(labels).set(i64::from(verdict.as_ref().is_some_and(|v| v.healthy)));
        m.connected_coreapps.get_or_create(labels).set(verdict.map_or(0, |v| i64::from(v.connected_coreapps)));
    }
}

/// When to probe again after `probe`: a number whose health is not polled
/// and whose session is open waits [`ADMIN_RECHECK`]; all else its interval.
pub fn next_interval(target: &Target, probe: &Probe) -> Duration {
    if !target.health && probe.admin == Admin::Open { ADMIN_RECHECK } else { target.interval }
}

/// One probe, within a deadline of its own: a webapp that never answers
/// holds one slot for that long and nothing else.
async fn probe(shared: Arc<Shared>, due: Due) -> (Due, Latest, Option<Duration>) {
    let t = &due.target;
    // Health, login, shards and settings each have the per-request timeout,
    // and the reads of the nodes' logs one all together.
    let deadline = t.timeout * 5;
    let (probe, latency) = match tokio::time::timeout(deadline, read(&shared, &due, t)).await {
        Ok(found) => found,
        Err(_) => (Probe::unreachable(format!("the webapp at {} did not answer within {deadline:?}", t.url)), None),
    };
    (due, Latest { probe, at: jiff::Timestamp::now() }, latency)
}

/// The client's answers, then, when they show the number down, the nodes'
/// logs: judged with the client's own shard count once it was read.
async fn read(shared: &Shared, due: &Due, t: &Target) -> (Probe, Option<Duration>) {
    let (mut probe, latency) = read_client(shared, &due.key, t).await;
    if probe.verdict(t.shards).is_some_and(|v| logs::worth_reading(&v)) {
        let since = logs::since(logs::window(t.interval, t.timeout), due.healthy_at, jiff::Timestamp::now());
        probe.conflict = read_conflict(shared, t, since).await;
    }
    (probe, latency)
}

async fn read_client(shared: &Shared, key: &Key, t: &Target) -> (Probe, Option<Duration>) {
    let client = match shared.clients.get(&t.trust, t.certificate_name.as_deref(), t.timeout) {
        Ok(c) => c,
        Err(e) => return (Probe::unreachable(e.to_string()), None),
    };
    let webapp = Webapp { client: &client, base_url: &t.url, api_key: &t.api_key };
    if t.pin_ca {
        return (pin(shared, key, t, &webapp).await, None);
    }
    let (health, latency) = if t.health {
        match webapp.health().await {
            Ok((health, latency)) => (Some(Ok(health)), Some(latency)),
            Err(e) => return (Probe::unreachable(e.to_string()), None),
        }
    } else {
        (None, None)
    };
    let mut probe = Probe { health, admin: Admin::NotTried, shards: None, settings: None, ca: None, conflict: None };
    let Some(password) = &t.admin_password else { return (probe, latency) };
    let token = match shared.sessions.token(key, &webapp, password).await {
        Ok((token, changed)) => {
            if changed {
                tracing::info!(namespace = %key.0, name = %key.1, "moved the client's admin user off its default password");
            }
            token
        }
        Err(e @ SessionError::PasswordRefused(_)) => {
            probe.admin = Admin::Refused(e.to_string());
            return (probe, latency);
        }
        Err(e) => {
            probe.admin = Admin::Unavailable(e.summary());
            return (probe, latency);
        }
    };
    probe.admin = Admin::Open;
    if !t.health {
        return (probe, latency);
    }
    // The shard count is read on the primary master; during a failover it
    // may be briefly unavailable (1017/1011), which leaves it unknown.
    match webapp.shards(&token).await {
        Ok(n) => probe.shards = Some(n),
        Err(CallError::Status { status: 401, .. }) => shared.sessions.forget(key),
        Err(_) => {}
    }
    if t.read_settings {
        let settings = webapp.settings(&token).await;
        if matches!(settings, Err(CallError::Status { status: 401, .. })) {
            shared.sessions.forget(key);
        }
        probe.settings = Some(settings.map_err(|e| e.to_string()));
    }
    (probe, latency)
}

/// How many node logs one probe reads at once.
const LOG_READS: usize = 4;

/// The first node, in the target's order (coreapps first), whose log since
/// `since` names a second instance of the number. The reads share one
/// timeout; a node whose log does not come in time (its node not answering,
/// say) holds back no other. A pod that is gone or not started yet has no log
/// to read; one whose container restarted may have logged the line before
/// it failed, so its previous container's log is read too.
async fn read_conflict(shared: &Shared, t: &Target, since: Duration) -> Option<Conflict> {
    let kube = shared.kube.as_ref()?;
    let pods: kube::Api<k8s_openapi::api::core::v1::Pod> = kube::Api::namespaced(kube.clone(), &t.nodes.namespace);
    let since = since.as_secs().max(1) as i64;
    let mut reads = futures::stream::iter(t.nodes.pods.iter().cloned().enumerate())
        .map(|(i, (pod, container))| {
            let pods = pods.clone();
            async move { (i, node_conflict(pods, pod, container, since).await) }
        })
        .buffer_unordered(LOG_READS);
    let mut found: Vec<(usize, Conflict)> = Vec::new();
    let _ = tokio::time::timeout(t.timeout, async {
        while let Some((i, conflict)) = reads.next().await {
            found.extend(conflict.map(|c| (i, c)));
        }
    })
    .await;
    found.into_iter().min_by_key(|(i, _)| *i).map(|(_, c)| c)
}

/// One node's log (then its previous container's) read for the conflict.
async fn node_conflict(
    pods: kube::Api<k8s_openapi::api::core::v1::Pod>,
    pod: String,
    container: String,
    since: i64,
) -> Option<Conflict> {
    // No byte limit: the apiserver cuts the newest lines, where the line is.
    let params = |previous| kube::api::LogParams {
        container: Some(container.clone()),
        previous,
        since_seconds: Some(since),
        tail_lines: Some(logs::MAX_LINES),
        ..Default::default()
    };
    let log = match pods.logs(&pod, &params(false)).await {
        Ok(log) => log,
        Err(kube::Error::Api(e)) if e.code == 403 => {
            tracing::warn!(pod = %pod, error = %e, "cannot read the node's log: pods/log is not allowed; a second instance of the number would go unseen");
            return None;
        }
        Err(e) => {
            tracing::debug!(pod = %pod, error = %e, "cannot read the node's log");
            return None;
        }
    };
    let line = match logs::conflict_line(&log) {
        Some(line) => line.to_string(),
        // No previous container answers an error: nothing to add.
        None => logs::conflict_line(&pods.logs(&pod, &params(true)).await.ok()?)?.to_string(),
    };
    Some(Conflict { pod, line: logs::clipped(&line) })
}

/// Reads the client's CA with an admin session and nothing else: the
/// connection is not verified yet, so not even the API key goes over it.
async fn pin(shared: &Shared, key: &Key, t: &Target, webapp: &Webapp<'_>) -> Probe {
    let unreachable = |e: &dyn std::fmt::Display| Probe::unreachable(format!("cannot read the webapp's CA: {e}"));
    let Some(password) = &t.admin_password else {
        return unreachable(&"the admin password is not available yet");
    };
    let token = match shared.sessions.token(key, webapp, password).await {
        Ok((token, _)) => token,
        // Summed up: the low-level reason changes from try to try.
        Err(e) => return unreachable(&e.summary()),
    };
    match webapp.certificate_authority(&token).await {
        Ok(ca) => Probe { ca: Some(ca), ..Probe::unreachable("the webapp's CA is being pinned".into()) },
        Err(e) => unreachable(&e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(interval: u64) -> Target {
        Target {
            health: true,
            url: "https://acme-webapp:443".into(),
            trust: Trust::SystemRoots,
            certificate_name: None,
            api_key: "k".into(),
            admin_password: Some("p".into()),
            read_settings: false,
            pin_ca: false,
            timeout: Duration::from_secs(5),
            interval: Duration::from_secs(interval),
            shards: 1,
            nodes: NodeLogs::default(),
            labels: NumberLabels { namespace: "ns".into(), name: "acme".into() },
        }
    }

    fn key(name: &str) -> Key {
        ("ns".into(), name.into())
    }

    fn latest(health: Result<&str, &str>) -> Latest {
        let health =
            health.map(|body| report::parse(body.as_bytes()).expect("health JSON")).map_err(|why| why.to_string());
        Latest {
            probe: Probe {
                health: Some(health),
                admin: Admin::Open,
                shards: Some(1),
                settings: None,
                ca: None,
                conflict: None,
            },
            at: jiff::Timestamp::UNIX_EPOCH,
        }
    }

    const CONNECTED: &str = r#"{"health":{"gateway_status":"connected"}}"#;

    #[test]
    fn the_verdict_takes_the_nodes_logs_and_the_clients_shard_count() {
        let kicked = r#"{"health":{"10.0.0.5:a":{"gateway_status":"disconnected","role":"primary_master"},
            "10.0.0.7:c":{"gateway_status":"disconnected","role":"coreapp"}}}"#;
        let mut probe = latest(Ok(kicked)).probe;
        assert_eq!(probe.verdict(4).unwrap().reason, report::SHARDS_NOT_CONNECTED);
        probe.conflict = Some(Conflict { pod: "acme-coreapp-0".into(), line: logs::CONFLICT_LINE.into() });
        let v = probe.verdict(4).unwrap();
        assert_eq!(v.reason, report::NUMBER_CONFLICT);
        assert!(v.message.contains("acme-coreapp-0"), "{}", v.message);
        // The client's count (1) judges the nodes; the spec's (4) only while
        // the client's is unknown.
        probe.conflict = None;
        assert!(probe.verdict(4).unwrap().message.contains("0 of 1"));
        probe.shards = None;
        assert_eq!(probe.verdict(4).unwrap().reason, report::PRIMARY_MASTER_DISCONNECTED, "multiconnect");
        assert_eq!(latest(Err("connection refused")).probe.verdict(1), None);
    }

    #[test]
    fn a_new_number_is_probed_at_once_and_then_on_its_interval() {
        let mut s = Schedule::default();
        let t0 = Instant::now();
        assert!(s.watch(&key("a"), target(30), t0));
        let (due, _) = s.take_due(t0, 8);
        assert_eq!(due.len(), 1);
        let (again, next) = s.take_due(t0, 8);
        assert!(again.is_empty(), "a probe in flight is not started twice");
        assert_eq!(next, None);
        let done = s.record(&due[0].key, due[0].version, latest(Ok(CONNECTED)), t0, Duration::from_secs(31));
        assert_eq!(done, Recorded::Changed);
        let (none, next) = s.take_due(t0 + Duration::from_secs(30), 8);
        assert!(none.is_empty());
        assert_eq!(next, Some(t0 + Duration::from_secs(31)));
        assert_eq!(s.take_due(t0 + Duration::from_secs(31), 8).0.len(), 1);
    }

    #[test]
    fn a_result_that_changes_nothing_wakes_nothing() {
        let mut s = Schedule::default();
        let t0 = Instant::now();
        s.watch(&key("a"), target(30), t0);
        let d = s.take_due(t0, 1).0.remove(0);
        assert_eq!(s.record(&d.key, d.version, latest(Ok(CONNECTED)), t0, Duration::ZERO), Recorded::Changed);
        let d = s.take_due(t0, 1).0.remove(0);
        let mut later = latest(Ok(CONNECTED));
        later.at = jiff::Timestamp::from_second(60).unwrap();
        assert_eq!(s.record(&d.key, d.version, later.clone(), t0, Duration::ZERO), Recorded::Unchanged);
        assert_eq!(s.latest(&key("a")), Some(later), "the time of the latest probe is kept");
        let d = s.take_due(t0, 1).0.remove(0);
        assert_eq!(s.record(&d.key, d.version, latest(Err("refused")), t0, Duration::ZERO), Recorded::Changed);
    }

    #[test]
    fn the_same_target_changes_nothing_and_a_changed_one_drops_the_old_result() {
        let mut s = Schedule::default();
        let t0 = Instant::now();
        s.watch(&key("a"), target(30), t0);
        let old = s.take_due(t0, 1).0.remove(0);
        assert!(!s.watch(&key("a"), target(30), t0), "unchanged");
        let mut trusted = target(30);
        trusted.trust = Trust::Ca(b"pem".to_vec());
        assert!(s.watch(&key("a"), trusted.clone(), t0));
        // The probe of the old target finishes after the change: not current.
        assert_eq!(s.record(&old.key, old.version, latest(Err("untrusted")), t0, Duration::ZERO), Recorded::Dropped);
        assert_eq!(s.latest(&key("a")), None);
        let new = s.take_due(t0, 1).0.remove(0);
        assert_eq!(new.target, trusted);
        assert_eq!(s.record(&new.key, new.version, latest(Ok(CONNECTED)), t0, Duration::ZERO), Recorded::Changed);
    }

    #[test]
    fn concurrency_is_bounded_and_the_longest_waiting_go_first() {
        let mut s = Schedule::default();
        let t0 = Instant::now();
        for (i, name) in ["a", "b", "c"].into_iter().enumerate() {
            s.watch(&key(name), target(30), t0 + Duration::from_secs(i as u64));
        }
        let later = t0 + Duration::from_secs(5);
        let (due, next) = s.take_due(later, 2);
        assert_eq!(due.iter().map(|d| d.key.1.as_str()).collect::<Vec<_>>(), ["a", "b"]);
        assert_eq!(next, None, "c waits for a free slot, not for a time");
        let (due, _) = s.take_due(later, 1);
        assert_eq!(due[0].key.1, "c");
    }

    #[test]
    fn forgotten_and_refreshed_numbers() {
        let mut s = Schedule::default();
        let t0 = Instant::now();
        s.watch(&key("a"), target(30), t0);
        let d = s.take_due(t0, 1).0.remove(0);
        s.record(&d.key, d.version, latest(Ok(CONNECTED)), t0, Duration::from_secs(30));
        assert!(s.refresh(&key("a"), t0));
        assert_eq!(s.latest(&key("a")), None, "a refreshed number waits for its next probe");
        assert_eq!(s.take_due(t0, 1).0.len(), 1, "probed at once");
        s.forget(&key("a"));
        assert_eq!(s.latest(&key("a")), None);
        assert!(s.take_due(t0 + Duration::from_secs(3600), 1).0.is_empty(), "a forgotten number is never due");
        assert!(!s.refresh(&key("a"), t0));
        assert_eq!(s.record(&d.key, d.version, latest(Ok(CONNECTED)), t0, Duration::ZERO), Recorded::Dropped);
    }

    #[test]
    fn without_health_polling_an_open_session_is_looked_at_hourly() {
        let polled = target(30);
        let admin_only = Target { health: false, ..target(30) };
        let open = latest(Ok(CONNECTED)).probe;
        let refused = Probe { health: None, admin: Admin::Unavailable("connection refused".into()), ..open.clone() };
        assert_eq!(next_interval(&polled, &open), Duration::from_secs(30));
        assert_eq!(next_interval(&admin_only, &open), ADMIN_RECHECK);
        assert_eq!(
            next_interval(&admin_only, &refused),
            Duration::from_secs(30),
            "until the session opens, on the interval"
        );
    }

    #[test]
    fn jitter_stays_within_a_tenth_of_the_interval() {
        for _ in 0..100 {
            let d = jittered(Duration::from_secs(30));
            assert!(d >= Duration::from_secs(30) && d < Duration::from_secs(33), "{d:?}");
        }
    }
}
