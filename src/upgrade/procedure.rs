//! The upgrade procedure as a pure state machine. Its whole state lives in
//! `status.upgrade`, so a restarted operator resumes at the step it left.
//!
//! 1. `StoppingNodes`: masters and coreapps of the old version scale to zero;
//!    the step ends when none of their pods exists, so old and new coreapps of
//!    a number never run at the same time.
//! 2. `UpgradingSchema`: a Job runs the new coreapp image with `WA_DB_UPGRADE=1`.
//! 3. `StartingMasters`, then 4. `StartingCoreapps`, at the new version.
//! 5. `RollingWebapps`: new webapps replace the old ones. (Old webapps
//!    refuse the upgraded schema, so health is only observable after this.)
//! 6. `Verifying`: the gateway must show every shard connected and a primary master.
//! 7. `Complete`: the new version is recorded as current.
//!
//! Every step has a deadline; past it, or when the schema Job fails, the
//! upgrade is stalled with a reason a person can act on. A stalled step keeps
//! watching: it goes on by itself once its blocker clears.

use jiff::{SignedDuration, Timestamp};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use crate::api::UpgradeStatus;

pub use crate::api::UpgradeStep as Step;

/// The steps of an upgrade that goes through, in order.
pub const ORDER: [Step; 7] = [
    Step::StoppingNodes,
    Step::UpgradingSchema,
    Step::StartingMasters,
    Step::StartingCoreapps,
    Step::RollingWebapps,
    Step::Verifying,
    Step::Complete,
];

/// The schema upgrade Job as the cluster reports it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum JobState {
    #[default]
    Absent,
    /// No container of its pods has started yet (the database is untouched).
    Pending(String),
    /// A container has started: the schema may be changing. The Job's
    /// earlier attempts that failed, and why the last did, once one did
    /// (it tries again within its retries and deadline).
    Running {
        last_failure: Option<String>,
    },
    Succeeded,
    /// Failed: why, and whether a container may have run (its pods failed,
    /// or one of them was seen started). A Job whose deadline passed while
    /// its pod never started (unpullable, never scheduled) ran nothing.
    Failed {
        why: String,
        ran: bool,
    },
    /// Its pod cannot start (the image cannot be pulled, a bad reference): the
    /// message names the image and the reason. Nothing has run yet.
    Unstartable(String),
}

impl JobState {
    /// At work, no attempt failed yet.
    pub fn running() -> Self {
        JobState::Running { last_failure: None }
    }
}

/// The gateway as the last probe saw it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Gateway {
    /// Health polling is off: the workloads' readiness stands in for it.
    NotPolled,
    /// Polling is on and no probe has answered since the operator started
    /// (or since the probe's settings changed): nothing is known yet.
    Awaiting,
    Healthy,
    Unhealthy(String),
}

/// What the reconcile found, for one step decision.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Observed {
    pub now: Timestamp,
    /// Master and coreapp pods that still exist, of any version.
    pub node_pods: usize,
    /// Both StatefulSets ask for no pod, and their controller has seen it:
    /// no pod of theirs is about to be made (one just made may not be seen yet).
    pub node_workloads_stopped: bool,
    pub job: JobState,
    /// Another of the object's schema Jobs, or a pod of one, that may still
    /// run (a called-off upgrade's, say): the upgrade's own Job is not made
    /// until it is gone, since two schema upgrades never run together.
    pub job_held_for: Option<String>,
    /// Each at the target version, with every pod ready.
    pub masters_ready: bool,
    pub coreapps_ready: bool,
    pub webapps_ready: bool,
    pub gateway: Gateway,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Deadlines {
    pub step: SignedDuration,
    pub schema: SignedDuration,
}

/// The workloads a step needs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Shape {
    /// Image version of masters and coreapps.
    pub node_version: String,
    pub masters_running: bool,
    pub coreapps_running: bool,
    pub webapp_version: String,
    /// Webapps run in every step but the first deployment's schema creation.
    pub webapps_running: bool,
    /// Whether the schema Job for the target version should exist.
    pub schema_job: bool,
}

/// A first deployment: the schema Job creates the client's databases before
/// any node or webapp starts, since several webapps starting at once on an
/// empty database race on `CREATE DATABASE` (a known pitfall of the client).
pub fn initializing(version: &str) -> Shape {
    Shape {
        node_version: version.to_string(),
        masters_running: false,
        coreapps_running: false,
        webapp_version: version.to_string(),
        webapps_running: false,
        schema_job: true,
    }
}

pub fn shape(upgrade: &UpgradeStatus) -> Shape {
    let (from, to) = (upgrade.from.clone(), upgrade.to.clone());
    match upgrade.step {
        Step::StoppingNodes => Shape {
            node_version: from.clone(),
            masters_running: false,
            coreapps_running: false,
            webapp_version: from,
            webapps_running: true,
            schema_job: false,
        },
        Step::UpgradingSchema => Shape {
            node_version: from.clone(),
            masters_running: false,
            coreapps_running: false,
            webapp_version: from,
            webapps_running: true,
            schema_job: true,
        },
        Step::StartingMasters => Shape {
            node_version: to,
            masters_running: true,
            coreapps_running: false,
            webapp_version: from,
            webapps_running: true,
            schema_job: false,
        },
        Step::StartingCoreapps => Shape {
            node_version: to,
            masters_running: true,
            coreapps_running: true,
            webapp_version: from,
            webapps_running: true,
            schema_job: false,
        },
        // Called off before the schema changed: the old version, as before.
        Step::RolledBack => Shape {
            node_version: from.clone(),
            masters_running: true,
            coreapps_running: true,
            webapp_version: from,
            webapps_running: true,
            schema_job: false,
        },
        Step::RollingWebapps | Step::Verifying | Step::Complete => Shape {
            node_version: to.clone(),
            masters_running: true,
            coreapps_running: true,
            webapp_version: to,
            webapps_running: true,
            schema_job: false,
        },
    }
}

fn time(t: Timestamp) -> Time {
    Time(t)
}

/// A new upgrade, at its first step.
pub fn begin(from: &str, to: &str, now: Timestamp) -> UpgradeStatus {
    UpgradeStatus {
        from: from.into(),
        to: to.into(),
        step: Step::StoppingNodes,
        started_at: time(now),
        step_started_at: time(now),
        message: format!("stopping masters and coreapps of {from}"),
        stalled_reason: None,
        schema_started_at: None,
    }
}

/// Moves the procedure forward as far as the observations allow (one step per
/// call: the next step's observations come from the next reconcile).
pub fn advance(upgrade: &UpgradeStatus, observed: &Observed, deadlines: Deadlines) -> UpgradeStatus {
    let step = upgrade.step;
    let touched =
        matches!(observed.job, JobState::Running { .. } | JobState::Failed { ran: true, .. } | JobState::Succeeded);
    let mut upgrade = match upgrade.schema_started_at {
        None if step == Step::UpgradingSchema && touched => {
            UpgradeStatus { schema_started_at: Some(time(observed.now)), ..upgrade.clone() }
        }
        _ => upgrade.clone(),
    };
    // A stalled schema step whose Job is gone: a person deleted it to run it
    // again, and the new Job gets the whole deadline. A Job not made yet
    // because another is still there is not one a person deleted.
    let held = observed.job_held_for.as_deref().filter(|_| observed.job == JobState::Absent);
    let held_message = |other: &str| {
        format!("waiting for {other} of this object to be gone before the schema upgrade Job to {} is made", upgrade.to)
    };
    if step == Step::UpgradingSchema
        && upgrade.stalled_reason.is_some()
        && observed.job == JobState::Absent
        && held.is_none()
    {
        upgrade.step_started_at = time(observed.now);
        upgrade.stalled_reason = None;
    }
    let upgrade = &upgrade;
    let to = &upgrade.to;
    // (done?, what the step waits for, a failure that stalls it at once)
    let (done, waiting, failure): (bool, String, Option<String>) = match step {
        Step::StoppingNodes => (
            observed.node_pods == 0 && observed.node_workloads_stopped,
            match observed.node_pods {
                0 => format!(
                    "waiting for the master and coreapp StatefulSets of {} to be seen at 0 replicas",
                    upgrade.from
                ),
                n => format!("waiting for {n} master and coreapp pods of {} to stop", upgrade.from),
            },
            None,
        ),
        Step::UpgradingSchema => match &observed.job {
            JobState::Succeeded => (true, String::new(), None),
            JobState::Failed { why, .. } => (
                false,
                String::new(),
                Some(format!(
                    "the schema upgrade Job to {to} failed: {why}; check its pod logs, fix the cause, then delete the Job to retry"
                )),
            ),
            JobState::Unstartable(why) => (
                false,
                String::new(),
                Some(format!(
                    "the schema upgrade Job to {to} cannot start: {why}; call the upgrade off (spec.upgrade.paused: true, or under the Manual policy spec.version back to {}), then fix the version or the image settings",
                    upgrade.from
                )),
            ),
            JobState::Absent if held.is_some() => (false, held.map(held_message).unwrap_or_default(), None),
            JobState::Absent | JobState::Running { last_failure: None } => {
                (false, format!("running the schema upgrade to {to} (WA_DB_UPGRADE=1)"), None)
            }
            JobState::Running { last_failure: Some(failure) } => (
                false,
                format!("running the schema upgrade to {to} (WA_DB_UPGRADE=1): {failure}; it tries again"),
                None,
            ),
            JobState::Pending(why) => (false, format!("the schema upgrade Job to {to} has not started: {why}"), None),
        },
        Step::StartingMasters => (observed.masters_ready, format!("waiting for the masters at {to} to be ready"), None),
        Step::StartingCoreapps => {
            (observed.coreapps_ready, format!("waiting for the coreapps at {to} to be ready"), None)
        }
        Step::RollingWebapps => (observed.webapps_ready, format!("rolling the webapps to {to}"), None),
        Step::Verifying => match &observed.gateway {
            Gateway::Healthy | Gateway::NotPolled => (true, String::new(), None),
            Gateway::Awaiting => (false, "waiting for the first health probe of the new version".into(), None),
            Gateway::Unhealthy(why) => {
                (false, format!("waiting for every shard and a primary master to connect: {why}"), None)
            }
        },
        Step::Complete | Step::RolledBack => return upgrade.clone(),
    };

    if done {
        let next = ORDER[ORDER.iter().position(|s| *s == step).expect("a step of the order") + 1];
        let message = match next {
            Step::UpgradingSchema => match held {
                Some(other) => held_message(other),
                None => format!("running the schema upgrade to {to} (WA_DB_UPGRADE=1)"),
            },
            Step::StartingMasters => format!("starting the masters at {to}"),
            Step::StartingCoreapps => format!("starting the coreapps at {to}"),
            Step::RollingWebapps => format!("rolling the webapps to {to}"),
            Step::Verifying => "waiting for every shard and a primary master to connect".to_string(),
            Step::Complete => format!("upgraded from {} to {to}", upgrade.from),
            Step::StoppingNodes | Step::RolledBack => unreachable!("never a next step"),
        };
        return UpgradeStatus {
            step: next,
            step_started_at: time(observed.now),
            message,
            stalled_reason: None,
            ..upgrade.clone()
        };
    }

    let deadline = if step == Step::UpgradingSchema {
        // The Job's own deadline, plus a margin for its pod to be scheduled.
        deadlines.schema + SignedDuration::from_mins(2)
    } else {
        deadlines.step
    };
    let elapsed = observed.now.duration_since(upgrade.step_started_at.0);
    let stalled = failure.or_else(|| {
        (elapsed > deadline).then(|| {
            format!(
                "{} has not finished after {}s (deadline {}s): {waiting}",
                step.as_str(),
                elapsed.as_secs(),
                deadline.as_secs()
            )
        })
    });
    UpgradeStatus { message: stalled.clone().unwrap_or(waiting), stalled_reason: stalled, ..upgrade.clone() }
}

/// Complete or rolled back: nothing more to do.
pub fn is_done(upgrade: &UpgradeStatus) -> bool {
    matches!(upgrade.step, Step::Complete | Step::RolledBack)
}

/// Whether the upgrade can still be called off: before the schema upgrade has
/// run (or while its Job cannot start), the database is as the old version
/// left it. A schema Job that is running is never interrupted, and one that
/// failed may have changed the schema before it did (its containers ran, or
/// its deadline stopped one at work): the old build never runs on it.
pub fn can_roll_back(upgrade: &UpgradeStatus, job: &JobState) -> bool {
    match upgrade.step {
        Step::StoppingNodes => true,
        Step::UpgradingSchema => {
            upgrade.schema_started_at.is_none()
                && matches!(
                    job,
                    JobState::Absent
                        | JobState::Pending(_)
                        | JobState::Unstartable(_)
                        | JobState::Failed { ran: false, .. }
                )
        }
        _ => false,
    }
}

/// Calls the upgrade off: the old version starts again.
pub fn roll_back(upgrade: &UpgradeStatus, why: &str, now: Timestamp) -> UpgradeStatus {
    UpgradeStatus {
        step: Step::RolledBack,
        step_started_at: time(now),
        message: format!("rolled back to {} before the schema upgrade to {}: {why}", upgrade.from, upgrade.to),
        stalled_reason: None,
        ..upgrade.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(secs: i64) -> Timestamp {
        Timestamp::from_second(1_700_000_000 + secs).unwrap()
    }

    const DEADLINES: Deadlines =
        Deadlines { step: SignedDuration::from_secs(600), schema: SignedDuration::from_secs(3600) };

    fn failed_job(why: &str, ran: bool) -> JobState {
        JobState::Failed { why: why.into(), ran }
    }

    fn observed(now: i64) -> Observed {
        Observed {
            now: at(now),
            node_pods: 0,
            node_workloads_stopped: true,
            job: JobState::Absent,
            job_held_for: None,
            masters_ready: false,
            coreapps_ready: false,
            webapps_ready: false,
            gateway: Gateway::Unhealthy("1 of 1 shards down".into()),
        }
    }

    fn step_of(u: &UpgradeStatus) -> Step {
        u.step
    }

    #[test]
    fn the_full_procedure_in_order() {
        let mut u = begin("2.53.2", "2.55.1", at(0));
        assert_eq!(step_of(&u), Step::StoppingNodes);

        let mut o = Observed { node_pods: 3, ..observed(5) };
        u = advance(&u, &o, DEADLINES);
        assert_eq!(step_of(&u), Step::StoppingNodes, "pods still exist");
        assert!(u.message.contains("3 master and coreapp pods"));

        // No pod seen, yet a StatefulSet still asks for some (or its
        // controller has not seen it asks for none): one may be on its way.
        o.node_pods = 0;
        o.node_workloads_stopped = false;
        u = advance(&u, &o, DEADLINES);
        assert_eq!(step_of(&u), Step::StoppingNodes, "a pod may be on its way");
        o.node_workloads_stopped = true;
        u = advance(&u, &o, DEADLINES);
        assert_eq!(step_of(&u), Step::UpgradingSchema);
        assert_eq!(u.step_started_at, Time(at(5)));

        o.job = JobState::running();
        u = advance(&u, &o, DEADLINES);
        assert_eq!(step_of(&u), Step::UpgradingSchema);
        o.job = JobState::Succeeded;
        u = advance(&u, &o, DEADLINES);
        assert_eq!(step_of(&u), Step::StartingMasters);

        u = advance(&u, &o, DEADLINES);
        assert_eq!(step_of(&u), Step::StartingMasters);
        o.masters_ready = true;
        u = advance(&u, &o, DEADLINES);
        assert_eq!(step_of(&u), Step::StartingCoreapps);
        o.coreapps_ready = true;
        u = advance(&u, &o, DEADLINES);
        assert_eq!(step_of(&u), Step::RollingWebapps);
        o.webapps_ready = true;
        u = advance(&u, &o, DEADLINES);
        assert_eq!(step_of(&u), Step::Verifying);
        u = advance(&u, &o, DEADLINES);
        assert_eq!(step_of(&u), Step::Verifying, "the gateway is not back yet");
        o.gateway = Gateway::Healthy;
        u = advance(&u, &o, DEADLINES);
        assert_eq!(step_of(&u), Step::Complete);
        assert!(is_done(&u));
        assert_eq!(u.started_at, Time(at(0)));
        assert_eq!(advance(&u, &o, DEADLINES), u, "complete is final");
    }

    #[test]
    fn shapes_never_run_old_and_new_nodes_together() {
        let u = begin("2.53.2", "2.55.1", at(0));
        for step in ORDER {
            let s = shape(&UpgradeStatus { step, ..u.clone() });
            let nodes_up = s.masters_running || s.coreapps_running;
            match step {
                Step::StoppingNodes | Step::UpgradingSchema => {
                    assert!(!nodes_up, "{step:?}: nodes are down until the schema is upgraded");
                    assert_eq!(s.node_version, "2.53.2");
                }
                _ => {
                    assert!(nodes_up);
                    assert_eq!(s.node_version, "2.55.1", "{step:?}: only the new version runs once started");
                }
            }
            assert_eq!(s.schema_job, step == Step::UpgradingSchema);
            assert_eq!(
                s.coreapps_running,
                !matches!(step, Step::StoppingNodes | Step::UpgradingSchema | Step::StartingMasters)
            );
            let webapp_new = matches!(step, Step::RollingWebapps | Step::Verifying | Step::Complete);
            assert_eq!(s.webapp_version, if webapp_new { "2.55.1" } else { "2.53.2" }, "{step:?}");
        }
    }

    #[test]
    fn deadlines_stall_with_the_blocker_and_clear_when_it_goes() {
        let u = begin("2.53.2", "2.55.1", at(0));
        let stuck = advance(&u, &Observed { node_pods: 1, ..observed(601) }, DEADLINES);
        assert_eq!(step_of(&stuck), Step::StoppingNodes);
        let reason = stuck.stalled_reason.as_deref().unwrap();
        assert!(reason.contains("StoppingNodes") && reason.contains("1 master and coreapp pods"), "{reason}");
        let unstuck = advance(&stuck, &observed(700), DEADLINES);
        assert_eq!(step_of(&unstuck), Step::UpgradingSchema);
        assert!(unstuck.stalled_reason.is_none());

        // The schema step has the Job's own deadline.
        let schema = UpgradeStatus { step: Step::UpgradingSchema, ..u.clone() };
        let running = Observed { job: JobState::running(), ..observed(3000) };
        assert!(advance(&schema, &running, DEADLINES).stalled_reason.is_none());
        let late = Observed { job: JobState::running(), ..observed(3900) };
        assert!(advance(&schema, &late, DEADLINES).stalled_reason.is_some());
        // An attempt failed: why, while the Job tries again within its deadline.
        let why = "1 attempt failed with exit code 1: Access denied".to_string();
        let retrying = Observed { job: JobState::Running { last_failure: Some(why) }, ..observed(3000) };
        let retrying = advance(&schema, &retrying, DEADLINES);
        assert!(retrying.stalled_reason.is_none());
        assert!(retrying.message.ends_with("exit code 1: Access denied; it tries again"), "{}", retrying.message);

        for step in [Step::StartingMasters, Step::StartingCoreapps, Step::RollingWebapps, Step::Verifying] {
            let s = UpgradeStatus { step, ..u.clone() };
            assert!(advance(&s, &observed(599), DEADLINES).stalled_reason.is_none(), "{step:?}");
            let stalled = advance(&s, &observed(601), DEADLINES);
            assert!(stalled.stalled_reason.as_deref().unwrap().contains(step.as_str()), "{step:?}");
            assert_eq!(step_of(&stalled), step, "a stalled step does not move on");
        }
    }

    #[test]
    fn a_failed_schema_job_stalls_at_once_and_says_how_to_retry() {
        let u = UpgradeStatus { step: Step::UpgradingSchema, ..begin("2.53.2", "2.55.1", at(0)) };
        let failed =
            advance(&u, &Observed { job: failed_job("BackoffLimitExceeded", true), ..observed(10) }, DEADLINES);
        assert_eq!(step_of(&failed), Step::UpgradingSchema);
        let reason = failed.stalled_reason.clone().unwrap();
        assert!(reason.contains("BackoffLimitExceeded") && reason.contains("delete the Job"), "{reason}");
        // Deleted for a retry long after the step began: the new Job gets the
        // whole deadline, and is not reported stalled while it runs.
        let retried = advance(&failed, &Observed { job: JobState::Absent, ..observed(5000) }, DEADLINES);
        assert_eq!((retried.stalled_reason.as_deref(), retried.step_started_at.clone()), (None, time(at(5000))));
        let running = advance(&retried, &Observed { job: JobState::running(), ..observed(5100) }, DEADLINES);
        assert_eq!(running.stalled_reason, None);
        assert_eq!(step_of(&running), Step::UpgradingSchema);
    }

    #[test]
    fn a_schema_job_held_for_another_says_so_and_stalls_until_that_one_is_gone() {
        let other = "Job acme-schema-2-54-1";
        let held = |now| Observed { job_held_for: Some(other.into()), ..observed(now) };
        // The nodes stopped: the schema step begins, and says what it waits for.
        let stopping = begin("2.53.2", "2.55.1", at(0));
        let u = advance(&stopping, &held(5), DEADLINES);
        assert_eq!(step_of(&u), Step::UpgradingSchema);
        assert_eq!(
            u.message,
            format!("waiting for {other} of this object to be gone before the schema upgrade Job to 2.55.1 is made")
        );
        assert_eq!(advance(&u, &held(60), DEADLINES).message, u.message);
        // Held past the schema deadline: a person must look at what it waits
        // for, and the step stays stalled (the Job is absent because it was
        // never made, not because a person deleted it).
        let late = 5 + 3600 + 121;
        let stalled = advance(&u, &held(late), DEADLINES);
        let reason = stalled.stalled_reason.clone().expect("stalled");
        assert!(reason.contains("UpgradingSchema has not finished") && reason.contains(other), "{reason}");
        let again = advance(&stalled, &held(late + 10), DEADLINES);
        assert!(again.stalled_reason.as_deref().is_some_and(|r| r.contains(other)), "{again:?}");
        assert_eq!(again.step_started_at, u.step_started_at, "no new deadline while held");
        // The other one gone: the Job is made and gets the whole deadline.
        let free = advance(&again, &observed(late + 20), DEADLINES);
        assert_eq!((free.stalled_reason.as_deref(), free.step_started_at.clone()), (None, time(at(late + 20))));
        assert_eq!(free.message, "running the schema upgrade to 2.55.1 (WA_DB_UPGRADE=1)");
        // A Job of its own that exists is what the step follows.
        let running = advance(&u, &Observed { job: JobState::running(), ..held(70) }, DEADLINES);
        assert_eq!(running.message, "running the schema upgrade to 2.55.1 (WA_DB_UPGRADE=1)");
        // Nothing of this upgrade ran: it can still be called off.
        assert!(can_roll_back(&u, &JobState::Absent));
    }

    #[test]
    fn resumes_from_every_step() {
        // A restarted operator knows only what status says: from each step, the
        // facts that finish it move it on, and facts that do not leave it as it is
        // however often the reconcile runs.
        let satisfied = Observed {
            node_pods: 0,
            job: JobState::Succeeded,
            masters_ready: true,
            coreapps_ready: true,
            webapps_ready: true,
            gateway: Gateway::Healthy,
            ..observed(10)
        };
        let blocked = Observed { node_pods: 2, job: JobState::running(), ..observed(10) };
        for (i, step) in ORDER.into_iter().enumerate().take(ORDER.len() - 1) {
            let u = UpgradeStatus { step, ..begin("2.53.2", "2.55.1", at(0)) };
            assert_eq!(step_of(&advance(&u, &satisfied, DEADLINES)), ORDER[i + 1], "{step:?}");
            let once = advance(&u, &blocked, DEADLINES);
            assert_eq!(step_of(&once), step, "{step:?}");
            assert_eq!(advance(&once, &blocked, DEADLINES), once, "{step:?}: idempotent");
        }
    }

    #[test]
    fn verifying_waits_for_a_probe_when_polling_is_on() {
        // After a restart of the operator no probe has answered yet: that
        // is no evidence that the new version connected.
        let u = UpgradeStatus { step: Step::Verifying, ..begin("2.53.2", "2.55.1", at(0)) };
        let o = Observed { gateway: Gateway::Awaiting, ..observed(1) };
        let waiting = advance(&u, &o, DEADLINES);
        assert_eq!(step_of(&waiting), Step::Verifying);
        assert!(!is_done(&waiting));
    }

    #[test]
    fn gateway_not_polled_completes_on_workload_readiness() {
        let u = UpgradeStatus { step: Step::Verifying, ..begin("2.53.2", "2.55.1", at(0)) };
        let o = Observed { gateway: Gateway::NotPolled, ..observed(1) };
        assert!(is_done(&advance(&u, &o, DEADLINES)));
    }

    #[test]
    fn an_image_that_cannot_start_stalls_at_once_and_names_it() {
        let u = UpgradeStatus { step: Step::UpgradingSchema, ..begin("2.53.2", "2.55.9", at(0)) };
        let why = "image coreapp:v2.55.9: ErrImagePull".to_string();
        let stalled = advance(&u, &Observed { job: JobState::Unstartable(why), ..observed(30) }, DEADLINES);
        assert_eq!(step_of(&stalled), Step::UpgradingSchema);
        let reason = stalled.stalled_reason.unwrap();
        assert!(reason.contains("coreapp:v2.55.9") && reason.contains("back to 2.53.2"), "{reason}");
    }

    #[test]
    fn only_an_upgrade_whose_schema_is_untouched_rolls_back() {
        let u = begin("2.53.2", "2.55.1", at(0));
        assert!(can_roll_back(&u, &JobState::Absent));
        let schema = UpgradeStatus { step: Step::UpgradingSchema, ..u.clone() };
        assert!(can_roll_back(&schema, &JobState::Unstartable("ErrImagePull".into())));
        assert!(!can_roll_back(&schema, &failed_job("BackoffLimitExceeded", true)), "it may have run");
        // Its deadline passed while its pod never started (an unpullable
        // image nobody fixed in time): nothing ran, and it can still be called off.
        let never_ran = failed_job("DeadlineExceeded", false);
        assert!(can_roll_back(&schema, &never_ran));
        let stays = advance(&schema, &Observed { job: never_ran, ..observed(10) }, DEADLINES);
        assert_eq!(stays.schema_started_at, None);
        // Seen at work once: deleting the Job makes it no younger.
        let running = advance(&schema, &Observed { job: JobState::running(), ..observed(10) }, DEADLINES);
        assert_eq!(running.schema_started_at, Some(time(at(10))));
        assert!(!can_roll_back(&running, &JobState::Absent), "the Job deleted after it ran");
        let pending =
            advance(&schema, &Observed { job: JobState::Pending("not scheduled".into()), ..observed(10) }, DEADLINES);
        assert_eq!(pending.schema_started_at, None);
        assert!(can_roll_back(&pending, &JobState::Absent));
        assert!(can_roll_back(&schema, &JobState::Pending("its pod is not scheduled".into())));
        assert!(!can_roll_back(&schema, &JobState::running()), "a running schema upgrade is never interrupted");
        assert!(!can_roll_back(&schema, &JobState::Succeeded));
        for step in [Step::StartingMasters, Step::StartingCoreapps, Step::RollingWebapps, Step::Verifying] {
            assert!(!can_roll_back(&UpgradeStatus { step, ..u.clone() }, &JobState::Succeeded), "{step:?}");
        }

        let back = roll_back(&schema, "spec.version is 2.53.2 again", at(50));
        assert!(is_done(&back));
        assert!(back.message.contains("rolled back to 2.53.2"), "{}", back.message);
        let s = shape(&back);
        assert!(s.masters_running && s.coreapps_running && !s.schema_job);
        assert_eq!((s.node_version.as_str(), s.webapp_version.as_str()), ("2.53.2", "2.53.2"));
        assert_eq!(advance(&back, &observed(60), DEADLINES), back, "rolled back is final");
    }
}
