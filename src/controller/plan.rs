//! The plan step's pure part: from the upgrade plan and what status records,
//! the shape the workloads take in this reconcile.

use kube::ResourceExt;

use super::gateway::RESOLVE_CONFLICT_ANNOTATION;
use super::status::{FirstSchema, SCHEMA_JOB_CANNOT_START, SCHEMA_JOB_FAILED};
use k8s_openapi::api::core::v1::PersistentVolumeClaim;

use crate::api::{
    ExternalConflictStatus, TierStatus, UpgradeStatus, UpgradeStep, WhatsAppNumber, WhatsAppNumberStatus,
};
use crate::upgrade::procedure::{self, JobState, Shape};
use crate::upgrade::{self, Plan};

/// The workloads' shape and why it is what it is.
#[derive(Clone, Debug, PartialEq)]
pub struct Workloads {
    pub shape: Shape,
    /// A first deployment whose schema Job has not succeeded: nothing starts yet.
    pub initializing: bool,
    /// `spec.suspend` in effect (an upgrade in progress finishes first).
    pub suspended: bool,
    /// Another instance of the number outside the cluster, not yet declared
    /// gone by a person: nodes stay stopped.
    pub external_conflict: Option<ExternalConflictStatus>,
    /// The schema may be part-way to a newer version than the plan's:
    /// nothing runs (see [`unfinished_schema_upgrade`]).
    pub schema_upgrade_unfinished: bool,
}

/// `first_job` is the state of the first deployment's schema Job, when no
/// version runs yet.
pub fn workloads(wan: &WhatsAppNumber, plan: &Plan, first_job: Option<&JobState>) -> Workloads {
    let status = wan.status.as_ref();
    let initializing = first_job.is_some_and(|j| *j != JobState::Succeeded);
    let mut shape = if initializing { procedure::initializing(&plan.steady_version) } else { plan.shape() };

    // Suspended: nodes stop first, webapps once no node is left. An upgrade
    // in progress keeps its own shape until it completes.
    let suspended = wan.spec.suspend && plan.upgrade.as_ref().is_none_or(procedure::is_done) && !initializing;
    if suspended {
        shape.masters_running = false;
        shape.coreapps_running = false;
        let stopped = |t: Option<&TierStatus>| t.is_some_and(|t| t.desired == 0 && t.ready == 0);
        shape.webapps_running =
            !(stopped(status.and_then(|s| s.masters.as_ref())) && stopped(status.and_then(|s| s.coreapps.as_ref())));
    }

    // A second instance of the number outside the cluster keeps the nodes
    // stopped until a person says it is gone.
    let external_conflict = status.and_then(|s| s.external_conflict.as_deref().cloned()).filter(|c| !resolved(wan, c));
    if external_conflict.is_some() {
        shape.masters_running = false;
        shape.coreapps_running = false;
    }
    Workloads { shape, initializing, suspended, external_conflict, schema_upgrade_unfinished: false }
}

/// The conflict status is to record: what the latest probe found (`probed`,
/// which carries a recorded conflict on), else the one recorded. Without a
/// probe result (one awaited, the number suspended, health polling off) a
/// conflict stands: only a person declares it over, and nothing may start
/// the nodes again meanwhile.
pub fn conflict_to_record(
    wan: &WhatsAppNumber,
    probed: Option<Option<&ExternalConflictStatus>>,
    recorded: Option<&ExternalConflictStatus>,
) -> Option<ExternalConflictStatus> {
    probed.unwrap_or(recorded).filter(|c| !resolved(wan, c)).cloned()
}

/// A schema upgrade begun on the number's databases (`begun`, recorded on
/// the media claim before its Job was made) that this object's status does
/// not follow, to a version newer than the one this plan runs: the object
/// was deleted during an upgrade's schema step (the Job stopped part-way)
/// and re-created, or its status was lost. The schema may be part-way to
/// `begun`, so nothing older may start on it: the reason a person reads.
pub fn unfinished_schema_upgrade(
    plan: &Plan,
    status: Option<&WhatsAppNumberStatus>,
    record: Option<&upgrade::SchemaUpgradeRecord>,
) -> Option<String> {
    let record = record?;
    let begun = record.version.as_str();
    // Its own upgrade to it: one under way, or one called off that wrote it.
    let followed = status.and_then(|s| s.upgrade.as_deref()).is_some_and(|u| {
        upgrade::same_version(&u.to, begun)
            && (!procedure::is_done(u) || record.began.as_deref() == Some(upgrade::attempt(u).as_str()))
    });
    let target = plan.target_version();
    if followed || !upgrade::newer(begun, target) {
        return None;
    }
    let why = format!(
        "a schema upgrade to {begun} was begun on these databases and not seen to finish (the media claim's {} annotation), so the schema may be part-way to {begun}: {target} does not start on it",
        crate::resources::names::ANNOTATION_SCHEMA_UPGRADE
    );
    Some(match &plan.blocker {
        // The spec already asks for it: what keeps the upgrade from beginning.
        Some((_, waits)) if !upgrade::newer(begun, &plan.target.version) => format!("{why}; {waits}"),
        _ => format!(
            "{why}. Set spec.version to {begun} or newer to run the schema upgrade again; only if its Job never started, remove the record instead (that annotation and {}-began)",
            crate::resources::names::ANNOTATION_SCHEMA_UPGRADE
        ),
    })
}

/// Names a first deployment on the record of its schema Job (see
/// [`crate::resources::media::SchemaUpgrade`]), as [`upgrade::attempt`]
/// names an upgrade: the object's uid, so a re-created object's first
/// deployment is another one, however soon it came.
pub fn first_deployment_attempt(wan: &WhatsAppNumber) -> String {
    wan.metadata.uid.clone().unwrap_or_default()
}

/// Whether a first deployment takes back its own record of a schema Job
/// (written by `first`, see [`first_deployment_attempt`]): the spec's
/// version changed to `steady` before the Job of the recorded version
/// started (`never_started`: the versions of this object's schema Jobs none
/// of whose pods started), so that Job is deleted (see [`first_jobs`]) and
/// its record goes with it. A record of a Job that started, failed or is
/// gone stays: the schema may be part-way to it.
pub fn first_record_called_off(
    record: &upgrade::SchemaUpgradeRecord,
    first: &str,
    steady: &str,
    never_started: &[&str],
) -> bool {
    record.began.as_deref() == Some(first)
        && !upgrade::same_version(&record.version, steady)
        && never_started.iter().any(|v| upgrade::same_version(v, &record.version))
}

/// Nothing runs while the schema may be part-way to a newer version than
/// the plan's (see [`unfinished_schema_upgrade`]).
pub fn hold_for_unfinished_schema_upgrade(workloads: &mut Workloads) {
    workloads.shape.masters_running = false;
    workloads.shape.coreapps_running = false;
    workloads.shape.webapps_running = false;
    workloads.shape.schema_job = false;
    workloads.schema_upgrade_unfinished = true;
}

/// The upgrade called off, in the reconcile that calls it off and in every
/// one after it until another upgrade begins: its schema Job's deletion
/// waits for its pods, which may take longer than one reconcile.
pub fn called_off<'a>(plan: &'a Plan, status: Option<&'a WhatsAppNumberStatus>) -> Option<&'a UpgradeStatus> {
    plan.upgrade.as_ref().or_else(|| status?.upgrade.as_deref()).filter(|u| u.step == UpgradeStep::RolledBack)
}

/// After an upgrade was called off, the old masters and coreapps start only
/// once the new version's schema Job and its pods are gone (`schema_left`).
pub fn hold_nodes_after_rollback(workloads: &mut Workloads, schema_left: bool) {
    if schema_left {
        workloads.shape.masters_running = false;
        workloads.shape.coreapps_running = false;
    }
}

/// Another of this object's schema Jobs that may still run, by the name of
/// the Job or pod, when the upgrade to `to` is about to make its own: two
/// schema upgrades never run together (one called off may still be going,
/// its pod stuck Terminating on a node that does not answer). `jobs`: each
/// Job's version, whether it finished, whether its deletion was asked for;
/// `pods`: each schema pod's Job version and whether it finished.
pub fn other_schema_job_at_work<'a>(
    to: &str,
    jobs: impl IntoIterator<Item = (&'a str, &'a str, bool, bool)>,
    pods: impl IntoIterator<Item = (&'a str, &'a str, bool)>,
) -> Option<String> {
    let other = |version: &str| !crate::upgrade::same_version(version, to);
    jobs.into_iter()
        .find(|(_, version, finished, deleting)| other(version) && (!finished || *deleting))
        .map(|(name, ..)| format!("Job {name}"))
        .or_else(|| {
            pods.into_iter()
                .find(|(_, version, finished)| other(version) && !finished)
                .map(|(name, ..)| format!("pod {name}"))
        })
}

/// What a first deployment does about its schema Jobs (no version runs yet).
#[derive(Clone, Debug, PartialEq)]
pub struct FirstJobs {
    pub report: FirstSchema,
    /// Whether the spec's version's Job may be created now.
    pub create: bool,
    /// Versions whose Jobs never started and are deleted first.
    pub delete: Vec<String>,
}

/// `own` is the state of the Job of `steady`, the version to deploy;
/// `others` the Jobs this object keeps for other versions (an earlier
/// `spec.version`), none of them succeeded (a succeeded one is a version that
/// ran: see [`live_evidence`]). Two schema upgrades never run together: the
/// spec's Job starts once the others are gone. One that never started is
/// deleted; one at work is waited for (once it succeeded, its version runs,
/// and the spec's is an upgrade from it); one that failed may have changed
/// the databases (past its deadline its pods are gone, and nothing recorded
/// whether it was seen at work), and waits for a person.
pub fn first_jobs(wan: &WhatsAppNumber, steady: &str, own: &JobState, others: &[(String, JobState)]) -> FirstJobs {
    let job = |version: &str| crate::resources::schema_job::name(wan, version);
    let delete: Vec<String> = others
        .iter()
        .filter(|(_, s)| matches!(s, JobState::Pending(_) | JobState::Unstartable(_)))
        .map(|(v, _)| v.clone())
        .collect();
    let at_work = others.iter().find(|(_, s)| matches!(s, JobState::Running { .. } | JobState::Absent));
    // Failed, even past a deadline with no pod left to say it never ran: a
    // first deployment keeps no record of a Job seen at work.
    let failed = others.iter().find_map(|(v, s)| match s {
        JobState::Failed { why, .. } => Some((v, why)),
        _ => None,
    });
    let report = if let Some((version, _)) = at_work {
        FirstSchema::Waiting(format!(
            "the schema Job {} of {version} (an earlier spec.version) is at work; the one of {steady} starts once it is done, as an upgrade from {version}",
            job(version)
        ))
    } else if let Some((version, why)) = failed {
        // Older than the failed one: its record on the media claim holds
        // the spec's version once the Job is gone (see `unfinished_schema_upgrade`).
        let then = if upgrade::newer(version, steady) {
            format!("set spec.version to {version} or newer, and delete it to run it again")
        } else {
            format!("delete it to go on with {steady}")
        };
        FirstSchema::Stuck(
            SCHEMA_JOB_FAILED,
            format!(
                "the schema Job {} of {version} (an earlier spec.version) failed ({why}) and may have changed the databases; {then}",
                job(version)
            ),
        )
    } else if let Some(version) = delete.first() {
        FirstSchema::Waiting(format!(
            "the schema Job {} of {version} (an earlier spec.version) never started and is deleted; the one of {steady} starts once it is gone",
            job(version)
        ))
    } else {
        match own {
            JobState::Failed { why, .. } => FirstSchema::Stuck(
                SCHEMA_JOB_FAILED,
                format!(
                    "the schema Job {name} failed ({why}); check its logs (kubectl logs job/{name}), fix the cause (the credentials, the database user's grants, the image), then delete the Job to run it again; a wrong database host or port cannot be changed: re-create the WhatsAppNumber",
                    name = job(steady)
                ),
            ),
            JobState::Unstartable(why) => FirstSchema::Stuck(
                SCHEMA_JOB_CANNOT_START,
                format!(
                    "the schema Job {name} cannot start ({why}); fix spec.version or the image settings: a Job that never started is then made anew",
                    name = job(steady)
                ),
            ),
            // Why it waits: a pod not scheduled shows here before the Job's deadline.
            JobState::Pending(why) => FirstSchema::Waiting(format!(
                "the schema Job {} creates the client's databases before any node or webapp starts; it has not started: {why}",
                job(steady)
            )),
            // Why its attempts fail (most often the database's address or
            // credentials), while it tries again.
            JobState::Running { last_failure: Some(failure) } => FirstSchema::Retrying(format!(
                "the schema Job {name} creates the client's databases before any node or webapp starts: {failure}; it tries again (kubectl logs job/{name})",
                name = job(steady)
            )),
            _ => FirstSchema::AtWork,
        }
    };
    FirstJobs { report, create: others.is_empty(), delete }
}

/// A first deployment's own schema Job that never started, made from a
/// template the spec no longer gives (`outdated`: a node selector, an image
/// or pull secrets changed since): it is deleted, and made anew from the
/// spec once gone. Nothing ran in it, so nothing is lost; the Jobs of other
/// versions go first.
pub fn replace_outdated(
    mut first: FirstJobs,
    wan: &WhatsAppNumber,
    steady: &str,
    own: &JobState,
    outdated: bool,
) -> FirstJobs {
    let never_started = matches!(own, JobState::Pending(_) | JobState::Unstartable(_));
    if !outdated || !never_started || !first.create {
        return first;
    }
    first.delete.push(steady.to_string());
    first.create = false;
    first.report = FirstSchema::Waiting(format!(
        "the schema Job {} never started and the spec changed since it was made; it is made anew from the spec once deleted",
        crate::resources::schema_job::name(wan, steady)
    ));
    first
}

/// A person declared this conflict over by annotating its detection time.
pub fn resolved(wan: &WhatsAppNumber, conflict: &ExternalConflictStatus) -> bool {
    wan.annotations().get(RESOLVE_CONFLICT_ANNOTATION) == Some(&conflict.detected_at)
}

/// What the cluster shows of the version that ran: the newer of the live
/// workloads' version and the schema version recorded on the media claim,
/// which outlives a deleted WhatsAppNumber.
/// A record of other databases than the spec's says nothing.
pub fn live_evidence(
    wan: &WhatsAppNumber,
    workloads: Option<&str>,
    media_claim: Option<&PersistentVolumeClaim>,
) -> Option<String> {
    let databases = crate::api::database_identity(&wan.spec);
    let recorded = media_claim.and_then(|c| crate::resources::media::schema_version_of(c, &databases));
    upgrade::running_version(recorded.as_deref(), workloads)
}

/// The schema version the media claim is to record: a first deployment's
/// version once its schema Job succeeded, an upgrade's target once its
/// schema Job did (`upgrade_job`, the Job of the upgrade in progress), else
/// what runs.
pub fn schema_version(
    plan: &Plan,
    workloads: &Workloads,
    running: Option<&str>,
    upgrade_job: &JobState,
) -> Option<String> {
    let upgraded = plan.upgrade.as_ref().filter(|u| match u.step {
        UpgradeStep::StoppingNodes | UpgradeStep::RolledBack => false,
        UpgradeStep::UpgradingSchema => *upgrade_job == JobState::Succeeded,
        _ => true,
    });
    match (upgraded, running) {
        (Some(u), _) => Some(u.to.clone()),
        (None, Some(running)) => Some(running.to_string()),
        (None, None) if !workloads.initializing => Some(plan.steady_version.clone()),
        (None, None) => None,
    }
}

/// The version that runs: the one status records, else the live workloads'.
pub fn running_version(wan: &WhatsAppNumber, live: Option<&str>) -> Option<String> {
    upgrade::running_version(wan.status.as_ref().and_then(|s| s.current_version.as_deref()), live)
}

#[cfg(test)]
mod tests {
    #[test]
    fn an_upgrades_schema_job_waits_for_another_still_going() {
        let none: [(&str, &str, bool); 0] = [];
        // The previous upgrade's succeeded Job, kept a day, and a failed one kept for a person.
        let done = [("acme-schema-2-53-2", "2.53.2", true, false), ("acme-schema-2-54-1", "2.54.1", true, false)];
        assert_eq!(other_schema_job_at_work("2.55.1", done, none), None);
        // Its own Job, whatever its state, is the one the upgrade follows.
        assert_eq!(other_schema_job_at_work("2.55.1", [("acme-schema-2-55-1", "2.55.1", false, false)], none), None);
        // A called-off Job being deleted, or unfinished, holds the new one.
        let going = [("acme-schema-2-54-1", "2.54.1", false, true)];
        assert_eq!(other_schema_job_at_work("2.55.1", going, none).as_deref(), Some("Job acme-schema-2-54-1"));
        let finished_but_deleting = [("acme-schema-2-54-1", "2.54.1", true, true)];
        assert!(other_schema_job_at_work("2.55.1", finished_but_deleting, none).is_some());
        // Its Job gone, a pod of it left over (deleted without its pods).
        let pods = [("acme-schema-2-54-1-x", "2.54.1", false), ("acme-schema-2-53-2-y", "2.53.2", true)];
        assert_eq!(other_schema_job_at_work("2.55.1", [], pods).as_deref(), Some("pod acme-schema-2-54-1-x"));
    }

    use super::*;
    use crate::api::{UpgradeSpec, WhatsAppNumberStatus};
    use crate::fixtures::{at, catalog, sample};

    #[test]
    fn a_first_deployment_takes_back_only_its_own_record_of_a_job_that_never_started() {
        let mut wan = sample();
        wan.metadata.uid = Some("7b0c2f9e-uid".into());
        let first = first_deployment_attempt(&wan);
        assert_eq!(first, "7b0c2f9e-uid");
        let record = |version: &str, began: &str| upgrade::SchemaUpgradeRecord {
            version: version.into(),
            began: Some(began.into()),
        };
        let own = record("2.55.1", &first);
        // The spec now names 2.53.2, and the Job of 2.55.1 never started.
        assert!(first_record_called_off(&own, &first, "2.53.2", &["2.55.1"]));
        assert!(first_record_called_off(&own, &first, "2.53.2", &["2.53.2", "2.55.1"]));
        // The Job of 2.55.1 started, failed, or is gone: the schema may be part-way.
        assert!(!first_record_called_off(&own, &first, "2.53.2", &[]));
        assert!(!first_record_called_off(&own, &first, "2.53.2", &["2.53.2"]));
        // The spec's own version: the record stays with its Job.
        assert!(!first_record_called_off(&own, &first, "2.55.1", &["2.55.1"]));
        // An earlier object's record (deleted, re-created), or an upgrade's.
        let earlier = record("2.55.1", "5d1e-uid");
        assert!(!first_record_called_off(&earlier, &first, "2.53.2", &["2.55.1"]));
        let earlier = record("2.55.1", "2024-04-30T23:59:59Z");
        assert!(!first_record_called_off(&earlier, &first, "2.53.2", &["2.55.1"]));
        let unnamed = upgrade::SchemaUpgradeRecord { version: "2.55.1".into(), began: None };
        assert!(!first_record_called_off(&unnamed, &first, "2.53.2", &["2.55.1"]));
    }

    #[test]
    fn nothing_older_starts_over_a_schema_upgrade_begun_and_not_seen_to_finish() {
        // Re-created at 2.53.2 (no status) over databases whose upgrade to
        // 2.55.1 was begun: held, whatever the plan would run.
        let wan = sample();
        let plan = steady(&wan);
        let earlier = "2024-01-20T00:00:00Z";
        let rec = |version: &str, began: &str| upgrade::SchemaUpgradeRecord {
            version: version.into(),
            began: Some(began.into()),
        };
        let recorded = rec("2.55.1", earlier);
        let record = Some(&recorded);
        let why = unfinished_schema_upgrade(&plan, None, record).expect("held");
        assert!(why.contains("part-way to 2.55.1") && why.contains("2.53.2 does not start"), "{why}");
        assert!(why.contains(crate::resources::names::ANNOTATION_SCHEMA_UPGRADE), "{why}");
        let mut held = plan.clone();
        held.hold_for_unfinished_schema_upgrade(why);
        assert_eq!(held.blocker.as_ref().map(|b| b.0), Some(upgrade::SCHEMA_UPGRADE_UNFINISHED));
        let mut w = workloads(&wan, &held, None);
        hold_for_unfinished_schema_upgrade(&mut w);
        let s = &w.shape;
        assert!(!s.masters_running && !s.coreapps_running && !s.webapps_running && !s.schema_job);
        assert!(w.schema_upgrade_unfinished);

        // Nothing recorded, the record no newer than the plan's version, or
        // the object's own upgrade to it (in progress or called off): the
        // plan goes on.
        assert_eq!(unfinished_schema_upgrade(&plan, None, None), None);
        assert_eq!(unfinished_schema_upgrade(&plan, None, Some(&rec("2.53.2", earlier))), None);
        assert_eq!(unfinished_schema_upgrade(&plan, None, Some(&rec("2.53", earlier))), None, "2.53 is 2.53.0");
        assert!(unfinished_schema_upgrade(&plan, None, Some(&rec("2.100.0", earlier))).is_some(), "as numbers");
        let own = |step| WhatsAppNumberStatus {
            upgrade: Some(Box::new(UpgradeStatus {
                step,
                ..procedure::begin("2.53.2", "2.55.1", at("2024-02-01T00:00:00Z"))
            })),
            ..Default::default()
        };
        assert_eq!(unfinished_schema_upgrade(&plan, Some(&own(UpgradeStep::UpgradingSchema)), record), None);
        let called_off = own(UpgradeStep::RolledBack);
        let its_own = rec("2.55.1", &upgrade::attempt(called_off.upgrade.as_deref().expect("an upgrade")));
        assert_eq!(unfinished_schema_upgrade(&plan, Some(&called_off), Some(&its_own)), None);
        // A call-off of its own to that version does not cover another
        // upgrade's record (a status restored over another object's).
        assert!(unfinished_schema_upgrade(&plan, Some(&called_off), record).is_some());
        // An upgrade the plan begins to an older version than the record's
        // is not begun; one to it or past it runs the schema upgrade again.
        let mut to_older = plan.clone();
        to_older.upgrade = Some(procedure::begin("2.53.2", "2.54.1", at("2024-02-01T00:00:00Z")));
        to_older.began = true;
        let why = unfinished_schema_upgrade(&to_older, None, record).expect("held");
        to_older.hold_for_unfinished_schema_upgrade(why);
        assert_eq!((to_older.upgrade, to_older.began), (None, false));
        // The spec asks for it, and the upgrade waits (paused, a window,
        // suspended): held, saying what it waits for.
        let mut waiting = plan.clone();
        waiting.target.version = "2.55.1".into();
        let paused = "the upgrade from 2.53.2 to 2.55.1 waits: spec.upgrade.paused is true";
        waiting.blocker = Some((upgrade::UPGRADES_PAUSED, paused.into()));
        let why = unfinished_schema_upgrade(&waiting, None, record).expect("held");
        assert!(why.ends_with(&format!("2.53.2 does not start on it; {paused}")), "{why}");
        let mut to_it = plan.clone();
        to_it.upgrade = Some(procedure::begin("2.53.2", "2.55.1", at("2024-02-01T00:00:00Z")));
        to_it.began = true;
        assert_eq!(unfinished_schema_upgrade(&to_it, None, record), None);
    }

    fn steady(wan: &WhatsAppNumber) -> Plan {
        let running = upgrade::Running { live_version: Some("2.53.2".into()), ..Default::default() };
        upgrade::plan(
            &UpgradeSpec::default(),
            &wan.spec.version,
            wan.status.as_ref(),
            &running,
            &catalog(),
            at("2024-02-01T00:00:00Z"),
        )
    }

    fn tier(desired: i32, ready: i32) -> Option<TierStatus> {
        Some(TierStatus { desired, ready, updated: ready, observed: true })
    }

    #[test]
    fn old_nodes_wait_for_the_called_off_schema_job_to_go() {
        let wan = sample();
        let plan = steady(&wan);
        let mut held = workloads(&wan, &plan, None);
        assert!(held.shape.masters_running && held.shape.coreapps_running);
        let webapps = held.shape.webapps_running;
        hold_nodes_after_rollback(&mut held, true);
        assert!(!held.shape.masters_running && !held.shape.coreapps_running, "held while the Job is there");
        assert_eq!(held.shape.webapps_running, webapps, "the webapps of the old version serve on");
        let mut free = workloads(&wan, &plan, None);
        let before = free.clone();
        hold_nodes_after_rollback(&mut free, false);
        assert_eq!(free, before, "started once it is gone");
    }

    #[test]
    fn an_upgrade_stays_called_off_after_the_reconcile_that_called_it_off() {
        let mut wan = sample();
        let begun = procedure::begin("2.53.2", "2.55.1", at("2024-02-01T00:00:00Z"));
        let rolled_back = procedure::roll_back(&begun, "spec.version is 2.53.2 again", at("2024-02-01T00:01:00Z"));
        wan.status = Some(WhatsAppNumberStatus {
            current_version: Some("2.53.2".into()),
            upgrade: Some(Box::new(rolled_back.clone())),
            ..Default::default()
        });
        // The next reconcile plans no upgrade: the record is done.
        let next = steady(&wan);
        assert!(next.upgrade.is_none());
        assert_eq!(called_off(&next, wan.status.as_ref()), Some(&rolled_back), "its Job may still be going");
        // Another upgrade begun since: its own steps keep the nodes stopped.
        let mut again = next.clone();
        again.upgrade = Some(begun);
        assert_eq!(called_off(&again, wan.status.as_ref()), None);
        assert_eq!(called_off(&next, None), None);
    }

    #[test]
    fn a_first_deployment_never_runs_two_schema_jobs_together() {
        let wan = sample();
        let pending = JobState::Pending("its pod is not scheduled".into());
        // Alone: its own Job, reported by how it stands.
        let alone = first_jobs(&wan, "2.55.1", &JobState::running(), &[]);
        assert_eq!(alone, FirstJobs { report: FirstSchema::AtWork, create: true, delete: vec![] });
        // Its attempts failing: why the last one did, while it tries again.
        let failing =
            JobState::Running { last_failure: Some("1 attempt failed with exit code 1: Access denied".into()) };
        let retrying = first_jobs(&wan, "2.55.1", &failing, &[]);
        assert!(
            matches!(&retrying.report, FirstSchema::Retrying(m) if m.contains("acme-schema-2-55-1") && m.contains("exit code 1: Access denied; it tries again")),
            "{:?}",
            retrying.report
        );
        assert!(retrying.create && retrying.delete.is_empty());
        let waiting = first_jobs(&wan, "2.55.1", &pending, &[]);
        assert!(
            matches!(&waiting.report, FirstSchema::Waiting(m) if m.contains("acme-schema-2-55-1") && m.ends_with("its pod is not scheduled")),
            "{:?}",
            waiting.report
        );
        let failed =
            first_jobs(&wan, "2.55.1", &JobState::Failed { why: "BackoffLimitExceeded".into(), ran: true }, &[]);
        assert!(matches!(&failed.report, FirstSchema::Stuck(SCHEMA_JOB_FAILED, m) if m.contains("delete the Job")));
        let unpullable = first_jobs(&wan, "2.55.1", &JobState::Unstartable("ErrImagePull".into()), &[]);
        assert!(
            matches!(&unpullable.report, FirstSchema::Stuck(SCHEMA_JOB_CANNOT_START, m) if m.contains("ErrImagePull"))
        );

        // An earlier spec.version's Job at work: the spec's waits for it.
        let busy = first_jobs(&wan, "2.55.1", &JobState::Absent, &[("2.53.2".into(), JobState::running())]);
        assert!(!busy.create && busy.delete.is_empty());
        assert!(matches!(&busy.report, FirstSchema::Waiting(m) if m.contains("2.53.2") && m.contains("at work")));
        // One that never started goes first; one that failed waits for a person.
        let never = first_jobs(&wan, "2.55.1", &JobState::Absent, &[("2.53.2".into(), pending.clone())]);
        assert_eq!((never.create, never.delete.clone()), (false, vec!["2.53.2".to_string()]));
        assert!(matches!(never.report, FirstSchema::Waiting(_)));
        let broken = first_jobs(
            &wan,
            "2.55.1",
            &JobState::Absent,
            &[
                ("2.53.2".into(), JobState::Failed { why: "BackoffLimitExceeded".into(), ran: true }),
                ("2.54.1".into(), pending),
                ("2.54.2".into(), JobState::Failed { why: "DeadlineExceeded".into(), ran: false }),
            ],
        );
        assert!(!broken.create);
        assert_eq!(broken.delete, vec!["2.54.1".to_string()], "the one that never started goes");
        assert!(matches!(&broken.report, FirstSchema::Stuck(SCHEMA_JOB_FAILED, m) if m.contains("2.53.2")));
        assert!(matches!(&broken.report, FirstSchema::Stuck(_, m) if m.ends_with("delete it to go on with 2.55.1")));
        // The failed one newer than the spec's: deleting it is not enough,
        // its record holds the older version.
        let failed = ("2.55.1".into(), JobState::Failed { why: "BackoffLimitExceeded".into(), ran: true });
        let newer = first_jobs(&wan, "2.53.2", &JobState::Absent, &[failed]);
        assert!(
            matches!(&newer.report, FirstSchema::Stuck(_, m) if m.ends_with("set spec.version to 2.55.1 or newer, and delete it to run it again")),
            "{:?}",
            newer.report
        );
    }

    #[test]
    fn a_first_deployments_job_that_never_started_is_made_anew_from_a_changed_spec() {
        let wan = sample();
        let pending = JobState::Pending("its pod is not scheduled".into());
        let first = |own: &JobState, others: &[(String, JobState)], outdated| {
            replace_outdated(first_jobs(&wan, "2.55.1", own, others), &wan, "2.55.1", own, outdated)
        };
        let replaced = first(&pending, &[], true);
        assert_eq!((replaced.create, replaced.delete.clone()), (false, vec!["2.55.1".to_string()]));
        assert!(
            matches!(&replaced.report, FirstSchema::Waiting(m) if m.contains("acme-schema-2-55-1") && m.contains("made anew"))
        );
        let unpullable = first(&JobState::Unstartable("ErrImagePull".into()), &[], true);
        assert_eq!(unpullable.delete, vec!["2.55.1".to_string()]);
        // The spec's own template: it waits as it is.
        assert_eq!(first(&pending, &[], false), first_jobs(&wan, "2.55.1", &pending, &[]));
        // Started, or done: never replaced.
        for state in [JobState::running(), JobState::Succeeded, JobState::Failed { why: "x".into(), ran: true }] {
            let kept = first(&state, &[], true);
            assert!(kept.delete.is_empty() && kept.create, "{state:?}");
        }
        // Another version's Job goes first.
        let others = [("2.53.2".to_string(), JobState::running())];
        assert_eq!(first(&pending, &others, true), first_jobs(&wan, "2.55.1", &pending, &others));
    }

    #[test]
    fn a_first_deployment_runs_only_its_schema_job_until_it_succeeds() {
        let wan = sample();
        let plan = steady(&wan);
        let waiting = workloads(&wan, &plan, Some(&JobState::running()));
        assert!(waiting.initializing);
        assert_eq!(waiting.shape, procedure::initializing("2.53.2"));
        let done = workloads(&wan, &plan, Some(&JobState::Succeeded));
        assert!(!done.initializing);
        assert_eq!(done.shape, plan.shape());
        assert_eq!(workloads(&wan, &plan, None), done, "a version already runs");
    }

    #[test]
    fn suspending_stops_the_nodes_first_and_the_webapps_once_no_node_is_left() {
        let mut wan = sample();
        wan.spec.suspend = true;
        wan.status = Some(WhatsAppNumberStatus { masters: tier(2, 2), coreapps: tier(2, 1), ..Default::default() });
        let plan = steady(&wan);
        let stopping = workloads(&wan, &plan, None);
        assert!(stopping.suspended);
        assert!(!stopping.shape.masters_running && !stopping.shape.coreapps_running);
        assert!(stopping.shape.webapps_running, "webapps serve until the nodes are gone");

        wan.status = Some(WhatsAppNumberStatus { masters: tier(0, 0), coreapps: tier(0, 0), ..Default::default() });
        assert!(!workloads(&wan, &plan, None).shape.webapps_running);

        // During a first deployment there is nothing to suspend yet.
        assert!(!workloads(&wan, &plan, Some(&JobState::running())).suspended);
    }

    #[test]
    fn another_instance_outside_the_cluster_stops_the_nodes_until_a_person_resolves_it() {
        let mut wan = sample();
        let conflict = ExternalConflictStatus {
            detected_at: "2026-12-01T10:00:00Z".into(),
            message: "another instance connected with this number".into(),
        };
        wan.status =
            Some(WhatsAppNumberStatus { external_conflict: Some(Box::new(conflict.clone())), ..Default::default() });
        let plan = steady(&wan);
        let held = workloads(&wan, &plan, None);
        assert_eq!(held.external_conflict, Some(conflict.clone()));
        assert!(!held.shape.masters_running && !held.shape.coreapps_running);
        assert!(held.shape.webapps_running);

        // Another detection time does not resolve it; this one does.
        wan.annotations_mut().insert(RESOLVE_CONFLICT_ANNOTATION.into(), "2026-11-30T00:00:00Z".into());
        assert!(workloads(&wan, &plan, None).external_conflict.is_some());
        wan.annotations_mut().insert(RESOLVE_CONFLICT_ANNOTATION.into(), conflict.detected_at.clone());
        let resumed = workloads(&wan, &plan, None);
        assert_eq!(resumed.external_conflict, None);
        assert!(resumed.shape.masters_running && resumed.shape.coreapps_running);
    }

    #[test]
    fn a_conflict_stands_without_a_probe_until_a_person_resolves_it() {
        let mut wan = sample();
        let conflict = ExternalConflictStatus {
            detected_at: "2026-12-01T10:00:00Z".into(),
            message: "another instance connected with this number".into(),
        };
        // Suspended, polling turned off, or a probe awaited: no result.
        assert_eq!(conflict_to_record(&wan, None, Some(&conflict)), Some(conflict.clone()));
        assert_eq!(conflict_to_record(&wan, Some(Some(&conflict)), None), Some(conflict.clone()), "found now");
        assert_eq!(conflict_to_record(&wan, Some(None), None), None);
        assert_eq!(conflict_to_record(&wan, None, None), None);
        wan.annotations_mut().insert(RESOLVE_CONFLICT_ANNOTATION.into(), conflict.detected_at.clone());
        assert_eq!(conflict_to_record(&wan, None, Some(&conflict)), None, "resolved by a person");
        assert_eq!(conflict_to_record(&wan, Some(Some(&conflict)), Some(&conflict)), None);
    }

    #[test]
    fn the_media_claim_records_a_schema_once_a_job_created_or_upgraded_it() {
        let wan = sample();
        let mut plan = steady(&wan);
        let initializing = workloads(&wan, &plan, Some(&JobState::running()));
        let absent = JobState::Absent;
        assert_eq!(schema_version(&plan, &initializing, None, &absent), None, "no schema yet");
        let created = workloads(&wan, &plan, Some(&JobState::Succeeded));
        assert_eq!(schema_version(&plan, &created, None, &absent).as_deref(), Some("2.53.2"));
        assert_eq!(schema_version(&plan, &created, Some("2.53.2"), &absent).as_deref(), Some("2.53.2"));

        let upgrade = |step| crate::api::UpgradeStatus {
            from: "2.53.2".into(),
            to: "2.55.1".into(),
            step,
            started_at: k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(at("2024-02-01T00:00:00Z")),
            step_started_at: k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(at("2024-02-01T00:00:00Z")),
            message: String::new(),
            stalled_reason: None,
            schema_started_at: None,
        };
        let running = JobState::running();
        for (step, job, recorded) in [
            (UpgradeStep::StoppingNodes, &absent, "2.53.2"),
            (UpgradeStep::UpgradingSchema, &running, "2.53.2"),
            // Succeeded, before the step advances: the databases hold the new schema.
            (UpgradeStep::UpgradingSchema, &JobState::Succeeded, "2.55.1"),
            (UpgradeStep::RolledBack, &absent, "2.53.2"),
            (UpgradeStep::StartingMasters, &absent, "2.55.1"),
            (UpgradeStep::Complete, &absent, "2.55.1"),
        ] {
            plan.upgrade = Some(upgrade(step));
            assert_eq!(schema_version(&plan, &created, Some("2.53.2"), job).as_deref(), Some(recorded), "{step:?}");
        }
    }

    #[test]
    fn a_recorded_schema_of_the_same_databases_counts_as_what_ran() {
        use crate::resources::names::{ANNOTATION_SCHEMA_DATABASES, ANNOTATION_SCHEMA_VERSION};
        let wan = sample();
        let claim = |version: &str, databases: &str| PersistentVolumeClaim {
            metadata: k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta {
                annotations: Some(
                    [
                        (ANNOTATION_SCHEMA_VERSION.to_string(), version.to_string()),
                        (ANNOTATION_SCHEMA_DATABASES.to_string(), databases.to_string()),
                    ]
                    .into(),
                ),
                ..Default::default()
            },
            ..Default::default()
        };
        let ours = crate::api::database_identity(&wan.spec);
        assert_eq!(live_evidence(&wan, None, Some(&PersistentVolumeClaim::default())), None);
        assert_eq!(live_evidence(&wan, Some("2.53.2"), None).as_deref(), Some("2.53.2"));
        let recorded = claim("2.55.1", &ours);
        assert_eq!(live_evidence(&wan, None, Some(&recorded)).as_deref(), Some("2.55.1"), "a re-created number");
        assert_eq!(live_evidence(&wan, Some("2.53.2"), Some(&recorded)).as_deref(), Some("2.55.1"), "the newer wins");
        assert_eq!(live_evidence(&wan, Some("2.57.2"), Some(&recorded)).as_deref(), Some("2.57.2"));
        // Another number under the same name, on other databases: no record.
        let other = claim("2.55.1", "other-db:3306/wa15550009999");
        assert_eq!(live_evidence(&wan, None, Some(&other)), None);
        assert_eq!(live_evidence(&wan, None, Some(&claim("not-a-version", &ours))), None, "unreadable: ignored");
    }
}
