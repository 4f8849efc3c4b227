//! Fencing: no master or coreapp of a phone number starts while a pod of
//! another instance of that number still exists, or a StatefulSet of another
//! instance asks for pods it has not made yet, anywhere the operator sees.
//!
//! The number claim says who may run a number; the pods say who still runs it.
//! A claim is released only once the holder's masters and coreapps (and the
//! pods of its schema Jobs) are gone,
//! and a WhatsAppNumber starts its own only when no other object's are left,
//! so a grace period, a partitioned node or a lost claim never lets two sets
//! of nodes of one number run at once.

use std::collections::HashMap;

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::ResourceExt;
use kube::runtime::watcher;

use super::cache::{Cache, PodOutline, SchemaPod};
use super::error::Result;
use super::outline::{Identity, Outline, ReadLabels};
use crate::api::WhatsAppNumber;
use crate::resources::names::{LABEL_COMPONENT, LABEL_INSTANCE, LABEL_MANAGED_BY, LABEL_NUMBER, MANAGED_BY};

/// Selects the masters and coreapps the operator made (the pods that
/// connect), and its webapps.
const WATCHED_PODS: &str =
    "app.kubernetes.io/managed-by=whatsapp-operator,app.kubernetes.io/component in (master,coreapp,webapp)";

/// The pods of every number the operator's pod watch lists: node pods, and
/// webapps, which are kept apart (see [`is_webapp`]). Pods without the number
/// label are listed too: their own WhatsAppNumber still counts them (by
/// instance) before it moves an upgrade on.
pub fn watched_pod_selector() -> String {
    WATCHED_PODS.to_string()
}

/// A webapp's pod: its trouble is shown, but it never counts as a node.
pub fn is_webapp(labels: &ReadLabels) -> bool {
    labels.get(LABEL_COMPONENT) == Some("webapp")
}

/// A pod Terminating longer than this is taken as stuck (its node likely no
/// longer answers) and a person is asked to act.
pub const STUCK_AFTER: SignedDuration = SignedDuration::from_mins(5);

/// A master or coreapp pod of some number, as far as fencing cares.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodePod {
    pub namespace: String,
    pub name: String,
    /// The WhatsAppNumber whose pod this is (its instance label).
    pub instance: String,
    /// When deletion was asked for, if it was.
    pub terminating_since: Option<Timestamp>,
    /// A StatefulSet that asks for pods and has none yet, standing in for them.
    pub workload: bool,
    /// When the pod was created (`None`: a workload, or not known).
    pub created: Option<Timestamp>,
}

impl NodePod {
    /// The pod, if it is a master or coreapp of the number with these digits.
    pub fn of_number(identity: &Identity, labels: &ReadLabels, digits: &str) -> Option<Self> {
        let node = matches!(labels.get(LABEL_COMPONENT), Some("master" | "coreapp"));
        let ours = labels.get(LABEL_MANAGED_BY) == Some(MANAGED_BY);
        if !node || !ours || labels.get(LABEL_NUMBER) != Some(digits) {
            return None;
        }
        Some(Self {
            namespace: identity.namespace.to_string(),
            name: identity.name.to_string(),
            instance: labels.get(LABEL_INSTANCE).unwrap_or_default().to_string(),
            terminating_since: identity.deletion,
            workload: false,
            created: None,
        })
    }

    /// The StatefulSet, if it runs masters or coreapps of the number with these
    /// digits and asks for pods (its controller may make them at any moment).
    pub fn of_statefulset(sts: &Outline<StatefulSet>, digits: &str) -> Option<Self> {
        let wants_pods = sts.state.replicas.unwrap_or(1) > 0;
        if !wants_pods || sts.identity.deleting() {
            return None;
        }
        Some(Self { workload: true, ..Self::of_number(&sts.identity, sts.labels.as_deref()?, digits)? })
    }

    /// Something of the WhatsAppNumber `instance` in `namespace` that a
    /// deletion waits for, by the name it is listed under.
    pub fn waited_for(namespace: &str, name: String, instance: &str, terminating_since: Option<Timestamp>) -> Self {
        Self {
            namespace: namespace.into(),
            name,
            instance: instance.into(),
            terminating_since,
            workload: false,
            created: None,
        }
    }

    /// The pod, if it is an unfinished pod of a schema Job of the number with
    /// these digits: a schema upgrade at work is as much an instance of the
    /// number as its nodes.
    pub fn of_schema_pod(pod: &SchemaPod, digits: &str) -> Option<Self> {
        if pod.finished() || pod.number.as_deref() != Some(digits) {
            return None;
        }
        Some(Self {
            namespace: pod.namespace.to_string(),
            name: pod.name.to_string(),
            instance: pod.instance.as_deref().unwrap_or_default().to_string(),
            terminating_since: pod.terminating_since,
            workload: false,
            created: pod.created,
        })
    }

    fn describe(&self, now: Timestamp) -> String {
        if self.workload {
            return format!("{}/{} (a StatefulSet whose pods are about to start)", self.namespace, self.name);
        }
        match self.terminating_since {
            Some(since) => {
                let minutes = now.duration_since(since).as_secs().max(0) / 60;
                format!("{}/{} (Terminating for {minutes}m)", self.namespace, self.name)
            }
            None => format!("{}/{}", self.namespace, self.name),
        }
    }

    fn stuck(&self, now: Timestamp) -> bool {
        self.terminating_since.is_some_and(|since| now.duration_since(since) >= STUCK_AFTER)
    }
}

/// The node pods of one number, split by whose they are.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Fence {
    /// This WhatsAppNumber's own masters and coreapps.
    pub own: Vec<NodePod>,
    /// Those of any other object (another namespace, another name, or made by hand).
    pub others: Vec<NodePod>,
}

impl Fence {
    /// Own pods are those in the object's namespace with its instance label,
    /// except a pod whose deletion was asked for before the object was
    /// created: an earlier object's of the same name, deleted with it. That
    /// object's finalizer waits for such pods, but one removed by hand while
    /// a pod is stuck on a node that does not answer leaves it behind, and
    /// the new object must not start beside it. (An older pod the object
    /// stops itself, re-created over running workloads, stays its own.)
    pub fn split(wan: &WhatsAppNumber, pods: Vec<NodePod>) -> Self {
        let (namespace, name) = (wan.namespace().unwrap_or_default(), wan.name_any());
        let born = wan.metadata.creation_timestamp.as_ref().map(|t| t.0);
        // A pod's deletion timestamp is when it was asked to stop plus its
        // grace period, the one the operator gives its nodes.
        let grace = SignedDuration::from_secs(crate::resources::workloads::NODE_GRACE_SECONDS);
        let earlier_objects = |p: &NodePod| match (p.created, p.terminating_since, born) {
            (Some(created), Some(deletion), Some(born)) => created < born && deletion - grace < born,
            _ => false,
        };
        let (own, others) =
            pods.into_iter().partition(|p| p.namespace == namespace && p.instance == name && !earlier_objects(p));
        Self { own, others }
    }

    /// Nodes of another instance exist and none of this one's runs (its own
    /// that are Terminating are on their way out, and give it no right to
    /// the number): starting now would make two instances of the number.
    pub fn blocks_start(&self) -> bool {
        !self.others.is_empty() && self.own.iter().all(|p| p.terminating_since.is_some())
    }

    /// The other instance's pods of one holder (`namespace/name/uid`).
    pub fn of_holder(&self, holder: &str) -> Vec<NodePod> {
        let mut parts = holder.splitn(3, '/');
        let (ns, name) = (parts.next().unwrap_or_default(), parts.next().unwrap_or_default());
        self.others.iter().filter(|p| p.namespace == ns && p.instance == name).cloned().collect()
    }
}

/// Pods a reconcile waits for, described for a condition message.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Waiting {
    pub pods: Vec<NodePod>,
    /// A pod has been Terminating for longer than [`STUCK_AFTER`], or one that
    /// nobody is stopping belongs to no WhatsAppNumber that would stop it: a
    /// person has to act.
    pub stuck: bool,
    pub message: String,
}

impl Waiting {
    /// `orphans_stuck`: pods that are not terminating count as stuck too (they
    /// belong to something that will not stop them on its own).
    pub fn new(mut pods: Vec<NodePod>, now: Timestamp, orphans_stuck: bool) -> Self {
        const SHOWN: usize = 5;
        // In a stable order: caches list in no particular one, and a message
        // that only reorders would be a status write every reconcile.
        pods.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
        let mut listed: Vec<String> = pods.iter().take(SHOWN).map(|p| p.describe(now)).collect();
        if pods.len() > SHOWN {
            listed.push(format!("and {} more", pods.len() - SHOWN));
        }
        let stuck_pods: Vec<&NodePod> = pods.iter().filter(|p| p.stuck(now)).collect();
        let running: Vec<&NodePod> = pods.iter().filter(|p| p.terminating_since.is_none()).collect();
        let mut message = listed.join(", ");
        if let Some(p) = stuck_pods.first() {
            message.push_str(&format!(
                ". A pod Terminating this long is usually on a node that no longer answers: once you are sure its containers stopped (the node is down or drained), remove it with `kubectl delete pod -n {} {} --grace-period=0 --force`",
                p.namespace, p.name
            ));
        }
        let orphans = orphans_stuck && !running.is_empty();
        if orphans {
            message.push_str(
                ". Pods that are not terminating belong to another instance of the number (another WhatsAppNumber, another installation of the operator, or made by hand): delete them or what runs them",
            );
        }
        Self { stuck: !stuck_pods.is_empty() || orphans, pods, message }
    }
}

/// The master and coreapp pods of the number with these digits, from the
/// operator's pod cache.
pub async fn pods_of_number(cache: &Cache<PodOutline>, digits: &str) -> Result<Vec<NodePod>> {
    let pods = cache.filter(|p| p.labels.get(LABEL_NUMBER) == Some(digits)).await?;
    Ok(pods
        .iter()
        .filter_map(|p| NodePod::of_number(&p.identity, &p.labels, digits).map(|n| NodePod { created: p.created, ..n }))
        .collect())
}

/// The masters and coreapps of the number with these digits that exist or
/// are about to: every pod, and for an instance that has none, each of its
/// StatefulSets that asks for pods. A number whose claim was lost between its
/// StatefulSets' creation and their first pods is still seen as running.
pub async fn nodes_of_number(
    pods: &Cache<PodOutline>,
    statefulsets: &Cache<Outline<StatefulSet>>,
    schema_pods: &Cache<SchemaPod>,
    digits: &str,
) -> Result<Vec<NodePod>> {
    let mut running = pods_of_number(pods, digits).await?;
    let schema = schema_pods.filter(|p| NodePod::of_schema_pod(p, digits).is_some()).await?;
    running.extend(schema.iter().filter_map(|p| NodePod::of_schema_pod(p, digits)));
    let workloads = statefulsets.filter(|s| NodePod::of_statefulset(s, digits).is_some()).await?;
    Ok(with_workloads(running, workloads.iter().filter_map(|s| NodePod::of_statefulset(s, digits))))
}

/// `pods`, and the workloads of instances that have no pod among them.
fn with_workloads(mut pods: Vec<NodePod>, workloads: impl IntoIterator<Item = NodePod>) -> Vec<NodePod> {
    let without_pods: Vec<NodePod> = workloads
        .into_iter()
        .filter(|w| !pods.iter().any(|p| p.namespace == w.namespace && p.instance == w.instance))
        .collect();
    pods.extend(without_pods);
    pods
}

/// The pods in `cache` (masters and coreapps, or webapps) in `namespace` of
/// the WhatsAppNumber `instance`.
pub async fn own_pods(
    cache: &Cache<PodOutline>,
    namespace: &str,
    instance: &str,
) -> Result<Vec<std::sync::Arc<PodOutline>>> {
    let own = |p: &PodOutline| &*p.identity.namespace == namespace && p.labels.get(LABEL_INSTANCE) == Some(instance);
    Ok(cache.filter(own).await?)
}

/// Which watch events about node pods can change a fencing decision or what
/// status tells: a pod appearing, starting to terminate, going away, or its
/// trouble changing (a crash loop beginning or ending; see
/// [`super::troubles`]). Readiness and other status changes are dropped, so a
/// rolling pod does not wake every object of its number. Keeps what it saw
/// per pod uid.
#[derive(Default)]
pub struct StartStopFilter {
    /// Per pod uid: whether it is terminating, and a digest of its trouble.
    seen: HashMap<super::compact::Compact, (bool, u64)>,
    /// While the watch lists again: what was seen before, so that pods gone
    /// in between are dropped rather than kept for good.
    before: Option<HashMap<super::compact::Compact, (bool, u64)>>,
    /// Only a trouble beginning, changing or ending, or a pod with one
    /// beginning to terminate, counts (webapp pods: their coming and going
    /// is their Deployment's to report).
    troubles_only: bool,
}

impl StartStopFilter {
    /// A filter that lets through only changes of a pod's trouble (and a
    /// pod with one beginning to terminate, which is then no longer named).
    pub fn troubles_only() -> Self {
        Self { troubles_only: true, ..Default::default() }
    }

    pub fn relevant(&mut self, event: &watcher::Event<PodOutline>) -> bool {
        match event {
            watcher::Event::Apply(pod) | watcher::Event::InitApply(pod) => {
                let now = (pod.identity.deleting(), digest(pod.trouble.as_deref()));
                let before = match (&mut self.before, event) {
                    (Some(before), watcher::Event::InitApply(_)) => before.remove(&pod.identity.uid),
                    _ => self.seen.get(&pod.identity.uid).copied(),
                };
                self.seen.insert(pod.identity.uid.clone(), now);
                match self.troubles_only {
                    // A pod with a trouble beginning to terminate is no longer
                    // named (see `apply_children`): that counts too.
                    true => {
                        let (was_deleting, had) = before.unwrap_or_default();
                        had != now.1 || (now.1 != 0 && was_deleting != now.0)
                    }
                    false => before != Some(now),
                }
            }
            watcher::Event::Delete(pod) => {
                let before = self.seen.remove(&pod.identity.uid);
                !self.troubles_only || before.is_some_and(|(_, trouble)| trouble != 0)
            }
            watcher::Event::Init => {
                self.before = Some(std::mem::take(&mut self.seen));
                false
            }
            watcher::Event::InitDone => {
                self.before = None;
                false
            }
        }
    }
}

/// A digest of a pod's trouble, 0 for none: what the filter keeps of it.
fn digest(trouble: Option<&str>) -> u64 {
    use std::hash::{BuildHasher, BuildHasherDefault, DefaultHasher};
    trouble.map_or(0, |t| BuildHasherDefault::<DefaultHasher>::default().hash_one(t) | 1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures::{at as ts, sample};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
    use std::collections::BTreeMap;

    fn pod_meta(namespace: &str, name: &str, instance: &str, component: &str, digits: &str) -> ObjectMeta {
        ObjectMeta {
            namespace: Some(namespace.into()),
            name: Some(name.into()),
            uid: Some(format!("{namespace}-{name}")),
            labels: Some(BTreeMap::from([
                (LABEL_MANAGED_BY.to_string(), MANAGED_BY.to_string()),
                (LABEL_COMPONENT.to_string(), component.to_string()),
                (LABEL_INSTANCE.to_string(), instance.to_string()),
                (LABEL_NUMBER.to_string(), digits.to_string()),
            ])),
            ..Default::default()
        }
    }

    /// A pod as its cache keeps it.
    fn outline(meta: ObjectMeta) -> PodOutline {
        PodOutline::of(crate::controller::cache::ListedPod { metadata: meta, status: None })
    }

    fn of_number(meta: ObjectMeta, digits: &str) -> Option<NodePod> {
        let pod = outline(meta);
        NodePod::of_number(&pod.identity, &pod.labels, digits)
    }

    fn node(namespace: &str, name: &str, instance: &str) -> NodePod {
        of_number(pod_meta(namespace, name, instance, "coreapp", "15550001111"), "15550001111").unwrap()
    }

    #[test]
    fn only_masters_and_coreapps_of_the_number_count() {
        let digits = "15550001111";
        assert!(of_number(pod_meta("a", "x-master-0", "x", "master", digits), digits).is_some());
        assert!(of_number(pod_meta("a", "x-coreapp-0", "x", "coreapp", digits), digits).is_some());
        assert!(of_number(pod_meta("a", "x-webapp-1", "x", "webapp", digits), digits).is_none());
        assert!(of_number(pod_meta("a", "x-coreapp-0", "x", "coreapp", "15550002222"), digits).is_none());
        let mut foreign = pod_meta("a", "x-coreapp-0", "x", "coreapp", digits);
        foreign.labels.as_mut().unwrap().insert(LABEL_MANAGED_BY.into(), "someone-else".into());
        assert!(of_number(foreign, digits).is_none());
        let mut terminating = pod_meta("a", "x-coreapp-0", "x", "coreapp", digits);
        terminating.deletion_timestamp = Some(Time(ts("2026-01-01T00:00:00Z")));
        let node = of_number(terminating, digits).expect("a terminating pod still counts");
        assert_eq!(node.terminating_since, Some(ts("2026-01-01T00:00:00Z")));
        assert_eq!((node.namespace.as_str(), node.name.as_str(), node.instance.as_str()), ("a", "x-coreapp-0", "x"));
    }

    #[test]
    fn own_pods_are_the_objects_namespace_and_name() {
        let wan = sample(); // team/acme
        let fence = Fence::split(
            &wan,
            vec![
                node("team", "acme-coreapp-0", "acme"),
                node("other", "acme-coreapp-0", "acme"),
                node("team", "b-master-0", "b"),
            ],
        );
        assert_eq!(fence.own.len(), 1);
        assert_eq!(fence.others.len(), 2);
        assert!(!fence.blocks_start(), "an instance that runs may keep running");
        assert_eq!(fence.of_holder("other/acme/uid-1"), vec![node("other", "acme-coreapp-0", "acme")]);

        let waiting = Fence::split(&wan, vec![node("other", "acme-coreapp-0", "acme")]);
        assert!(waiting.blocks_start(), "another instance's pod keeps this one from starting");
        assert!(!Fence::split(&wan, vec![]).blocks_start());
    }

    #[test]
    fn a_schema_pod_at_work_fences_the_number_and_an_earlier_objects_is_not_own() {
        let mut wan = sample(); // team/acme
        wan.metadata.creation_timestamp = Some(Time(ts("2026-01-01T00:10:00Z")));
        let schema_pod = |created: &str, deletion: Option<&str>, phase: &str| {
            let pod: k8s_openapi::api::core::v1::Pod = serde_json::from_value(serde_json::json!({
                "metadata": {"name": "acme-schema-2-53-2-x", "namespace": "team",
                    "creationTimestamp": created, "deletionTimestamp": deletion,
                    "labels": {"app.kubernetes.io/instance": "acme", LABEL_NUMBER: "15550001111",
                        "batch.kubernetes.io/job-name": "acme-schema-2-53-2"}},
                "status": {"phase": phase}}))
            .unwrap();
            SchemaPod::of(pod)
        };
        // Its own, at work: its own instance.
        let own = NodePod::of_schema_pod(&schema_pod("2026-01-01T00:11:00Z", None, "Running"), "15550001111");
        let fence = Fence::split(&wan, own.into_iter().collect());
        assert_eq!((fence.own.len(), fence.others.len()), (1, 0));
        // Ended: nothing.
        assert!(NodePod::of_schema_pod(&schema_pod("2026-01-01T00:11:00Z", None, "Failed"), "15550001111").is_none());
        // An earlier object's of the same name, stuck Terminating: another instance.
        let stuck = schema_pod("2026-01-01T00:00:00Z", Some("2026-01-01T00:05:00Z"), "Running");
        let fence = Fence::split(&wan, NodePod::of_schema_pod(&stuck, "15550001111").into_iter().collect());
        assert_eq!((fence.own.len(), fence.others.len()), (0, 1));
        assert!(fence.blocks_start());
        // Another number's: none of this one's.
        assert!(NodePod::of_schema_pod(&stuck, "15550002222").is_none());
    }

    #[test]
    fn own_pods_on_their_way_out_give_no_right_to_start_beside_another_instance() {
        let wan = sample(); // team/acme
        let mut leaving = node("team", "acme-coreapp-0", "acme");
        leaving.terminating_since = Some(ts("2026-01-01T00:00:00Z"));
        // This object lost the number; its pods stop while the holder's run.
        let fence = Fence::split(&wan, vec![leaving.clone(), node("other", "acme-coreapp-0", "acme")]);
        assert_eq!((fence.own.len(), fence.others.len()), (1, 1));
        assert!(fence.blocks_start(), "a free claim is left to the instance that runs");
        // With nothing else of the number about, its own leaving pods block nothing.
        assert!(!Fence::split(&wan, vec![leaving.clone()]).blocks_start());
        // One of its own that runs: the two instances race for the claim, as before.
        let fence =
            Fence::split(&wan, vec![leaving, node("team", "acme-master-0", "acme"), node("other", "x", "acme")]);
        assert!(!fence.blocks_start());
    }

    #[test]
    fn a_pod_older_than_the_object_is_an_earlier_objects_of_the_same_name() {
        let mut wan = sample(); // team/acme
        wan.metadata.creation_timestamp = Some(Time(ts("2026-01-01T00:10:00Z")));
        let made = |at: &str| NodePod { created: Some(ts(at)), ..node("team", "acme-coreapp-0", "acme") };
        // The earlier object's finalizer was removed by hand while its pod
        // was stuck Terminating: the new object waits for that pod.
        let mut stuck = made("2026-01-01T00:00:00Z");
        stuck.terminating_since = Some(ts("2026-01-01T00:05:00Z"));
        let fence = Fence::split(&wan, vec![stuck.clone()]);
        assert_eq!((fence.own.len(), fence.others.len()), (0, 1));
        assert!(fence.blocks_start());
        assert_eq!(fence.of_holder("team/acme/uid-of-the-earlier-object"), vec![stuck.clone()]);
        // With one of its own beside it, the stale one still counts apart.
        let fence = Fence::split(&wan, vec![stuck.clone(), made("2026-01-01T00:10:05Z")]);
        assert_eq!((fence.own.len(), fence.others.len()), (1, 1));
        // An older pod that runs on: the object was re-created over its
        // workloads (deleted with --cascade=orphan), which it keeps, also
        // once it stops them (deletion asked at 00:20, 60 s of grace).
        assert_eq!(Fence::split(&wan, vec![made("2026-01-01T00:00:00Z")]).own.len(), 1);
        let mut stopped_by_it = made("2026-01-01T00:00:00Z");
        stopped_by_it.terminating_since = Some(ts("2026-01-01T00:21:00Z"));
        assert_eq!(Fence::split(&wan, vec![stopped_by_it]).own.len(), 1);
        // Asked to stop 30 s before the object was created: its grace ends after.
        let mut just_before = made("2026-01-01T00:00:00Z");
        just_before.terminating_since = Some(ts("2026-01-01T00:10:30Z"));
        assert_eq!(Fence::split(&wan, vec![just_before]).others.len(), 1);
        // Terminating but made since the object, or its age not known: its own.
        let mut rolling = made("2026-01-01T00:10:00Z");
        rolling.terminating_since = stuck.terminating_since;
        assert_eq!(Fence::split(&wan, vec![rolling]).own.len(), 1);
        let mut unknown = node("team", "acme-coreapp-0", "acme");
        unknown.terminating_since = stuck.terminating_since;
        assert_eq!(Fence::split(&wan, vec![unknown]).own.len(), 1);
    }

    #[test]
    fn a_pod_terminating_for_long_asks_a_person() {
        let mut p = node("other", "acme-coreapp-0", "acme");
        p.terminating_since = Some(ts("2026-01-01T00:00:00Z"));
        let fresh = Waiting::new(vec![p.clone()], ts("2026-01-01T00:01:00Z"), false);
        assert!(!fresh.stuck);
        assert_eq!(fresh.message, "other/acme-coreapp-0 (Terminating for 1m)");
        let long = Waiting::new(vec![p], ts("2026-01-01T00:07:00Z"), false);
        assert!(long.stuck);
        assert!(
            long.message.contains("kubectl delete pod -n other acme-coreapp-0 --grace-period=0 --force"),
            "{}",
            long.message
        );
    }

    #[test]
    fn running_pods_of_another_instance_are_stuck_only_where_nothing_stops_them() {
        let running = node("other", "acme-coreapp-0", "acme");
        assert!(!Waiting::new(vec![running.clone()], ts("2026-01-01T00:00:00Z"), false).stuck);
        let w = Waiting::new(vec![running], ts("2026-01-01T00:00:00Z"), true);
        assert!(w.stuck);
        assert!(w.message.contains("delete them or what runs them"), "{}", w.message);
    }

    #[test]
    fn long_lists_are_cut() {
        let pods: Vec<NodePod> = (0..8).map(|i| node("o", &format!("p-{i}"), "p")).collect();
        let w = Waiting::new(pods, ts("2026-01-01T00:00:00Z"), false);
        assert!(w.message.ends_with("o/p-4, and 3 more"), "{}", w.message);
    }

    /// A StatefulSet as its cache keeps it.
    fn statefulset(namespace: &str, name: &str, instance: &str, replicas: i32) -> Outline<StatefulSet> {
        Outline::of(
            StatefulSet {
                metadata: pod_meta(namespace, name, instance, "coreapp", "15550001111"),
                spec: Some(k8s_openapi::api::apps::v1::StatefulSetSpec {
                    replicas: Some(replicas),
                    ..Default::default()
                }),
                ..Default::default()
            },
            &[],
        )
    }

    #[test]
    fn a_statefulset_that_asks_for_pods_stands_in_for_them_until_they_exist() {
        let digits = "15550001111";
        let holder = NodePod::of_statefulset(&statefulset("a", "h-coreapp", "h", 2), digits).expect("asks for pods");
        assert!(holder.workload);
        assert!(NodePod::of_statefulset(&statefulset("a", "h-coreapp", "h", 0), digits).is_none(), "scaled to zero");
        let mut deleted = statefulset("a", "h-coreapp", "h", 2);
        deleted.identity.deletion = Some(ts("2026-01-01T00:00:00Z"));
        assert!(NodePod::of_statefulset(&deleted, digits).is_none(), "being deleted");

        // No pod of the holder yet: its StatefulSet keeps a waiter from starting.
        let waiter = {
            let mut w = sample();
            w.metadata.namespace = Some("b".into());
            w
        };
        let fence = Fence::split(&waiter, with_workloads(vec![], [holder.clone()]));
        assert!(fence.blocks_start());
        assert!(
            Waiting::new(fence.others, ts("2026-01-01T00:00:00Z"), true).message.contains("a/h-coreapp (a StatefulSet")
        );

        // Once the holder has pods, they are what is listed.
        let pods = vec![node("a", "h-coreapp-0", "h")];
        assert_eq!(with_workloads(pods.clone(), [holder]), pods);
    }

    #[test]
    fn the_message_does_not_depend_on_the_order_pods_are_listed_in() {
        let now = ts("2026-01-01T00:00:00Z");
        let pods: Vec<NodePod> =
            ["b-master-1", "a-coreapp-0", "b-master-0"].iter().map(|n| node("o", n, "p")).collect();
        let reversed: Vec<NodePod> = pods.iter().rev().cloned().collect();
        let (w, v) = (Waiting::new(pods, now, false), Waiting::new(reversed, now, false));
        assert_eq!(w, v);
        assert_eq!(w.message, "o/a-coreapp-0, o/b-master-0, o/b-master-1");
    }

    #[test]
    fn only_start_terminate_trouble_and_delete_wake_anyone() {
        let mut filter = StartStopFilter::default();
        let pod = outline(pod_meta("a", "x-coreapp-0", "x", "coreapp", "1"));
        assert!(filter.relevant(&watcher::Event::Apply(pod.clone())), "a new pod");
        let mut addressed = pod.clone();
        addressed.ip = Some("10.0.0.7".into());
        assert!(!filter.relevant(&watcher::Event::Apply(addressed.clone())), "a status change");
        let mut looping = addressed.clone();
        looping.trouble = Some("restarting, last exit code 1".into());
        assert!(filter.relevant(&watcher::Event::Apply(looping.clone())), "a crash loop begins");
        assert!(!filter.relevant(&watcher::Event::Apply(looping.clone())), "and goes on");
        let mut other = looping.clone();
        other.trouble = Some("restarting, last exit code 137 (OOMKilled)".into());
        assert!(filter.relevant(&watcher::Event::Apply(other)), "another trouble");
        assert!(filter.relevant(&watcher::Event::Apply(addressed.clone())), "it ends");
        // Listed again: unchanged pods wake no one, a pod gone in between is
        // forgotten.
        let gone = outline(pod_meta("a", "x-coreapp-1", "x", "coreapp", "1"));
        assert!(filter.relevant(&watcher::Event::Apply(gone)));
        assert!(!filter.relevant(&watcher::Event::<PodOutline>::Init));
        assert!(filter.relevant(&watcher::Event::InitApply(looping.clone())), "changed while not watched");
        assert!(!filter.relevant(&watcher::Event::<PodOutline>::InitDone));
        assert_eq!(filter.seen.len(), 1, "the pod gone in between is forgotten");
        assert!(!filter.relevant(&watcher::Event::<PodOutline>::Init));
        assert!(!filter.relevant(&watcher::Event::InitApply(looping)), "unchanged");
        assert!(!filter.relevant(&watcher::Event::<PodOutline>::InitDone));
        let mut deleting = pod.clone();
        deleting.identity.deletion = Some(ts("2026-01-01T00:00:00Z"));
        assert!(filter.relevant(&watcher::Event::Apply(deleting.clone())), "terminating");
        assert!(!filter.relevant(&watcher::Event::Apply(deleting.clone())));
        assert!(filter.relevant(&watcher::Event::Delete(deleting)), "gone");
        assert!(!filter.relevant(&watcher::Event::<PodOutline>::InitDone));
        // After a re-list the pod is new to the filter again.
        assert!(filter.relevant(&watcher::Event::InitApply(pod)));
    }

    #[test]
    fn a_webapp_pod_wakes_anyone_only_when_its_trouble_changes() {
        let mut filter = StartStopFilter::troubles_only();
        let pod = outline(pod_meta("a", "x-webapp-5d9f-abcde", "x", "webapp", "1"));
        assert!(is_webapp(&pod.labels) && !is_webapp(&outline(pod_meta("a", "x-master-0", "x", "master", "1")).labels));
        assert!(!filter.relevant(&watcher::Event::Apply(pod.clone())), "a new pod: the Deployment reports it");
        let mut pulling = pod.clone();
        pulling.trouble = Some("cannot pull image webapp:v9 (ErrImagePull)".into());
        assert!(filter.relevant(&watcher::Event::Apply(pulling.clone())), "a trouble begins");
        assert!(!filter.relevant(&watcher::Event::Apply(pulling.clone())), "and goes on");
        let mut deleting = pulling.clone();
        deleting.identity.deletion = Some(ts("2026-01-01T00:00:00Z"));
        assert!(filter.relevant(&watcher::Event::Apply(deleting.clone())), "terminating: no longer named");
        assert!(!filter.relevant(&watcher::Event::Apply(deleting.clone())), "and goes on");
        assert!(filter.relevant(&watcher::Event::Delete(deleting)), "gone with its trouble");
        assert!(!filter.relevant(&watcher::Event::Apply(pod.clone())));
        let mut calm_going = pod.clone();
        calm_going.identity.deletion = Some(ts("2026-01-01T00:00:00Z"));
        assert!(!filter.relevant(&watcher::Event::Apply(calm_going)), "terminating without a trouble");
        assert!(!filter.relevant(&watcher::Event::Delete(pod.clone())), "gone without one");
        // Listed again: a trouble that began while not watched counts.
        assert!(!filter.relevant(&watcher::Event::<PodOutline>::Init));
        assert!(filter.relevant(&watcher::Event::InitApply(pulling)));
        assert!(!filter.relevant(&watcher::Event::InitApply(pod)));
        assert!(!filter.relevant(&watcher::Event::<PodOutline>::InitDone));
    }
}
