//! Build expiry and upgrades: the release catalog, the policy that picks the
//! version to run, and the step-by-step upgrade procedure.

pub mod catalog;
pub mod job;
pub mod policy;
pub mod procedure;

use jiff::{SignedDuration, Timestamp};

use crate::api::{BuildStatus, UpgradePolicy, UpgradeSpec, UpgradeStatus, WhatsAppNumberStatus};
use catalog::Catalog;
use policy::{BuildState, Target};
use procedure::Shape;

pub const DOWNGRADE_REFUSED: &str = "DowngradeRefused";
pub const UPGRADES_PAUSED: &str = "UpgradesPaused";
pub const OUTSIDE_WINDOW: &str = "OutsideMaintenanceWindow";
pub const NO_NEWER_RELEASE: &str = "NoNewerRelease";
pub const SUSPENDED: &str = "Suspended";
pub const SCHEMA_UPGRADE_UNFINISHED: &str = "SchemaUpgradeUnfinished";

/// What a reconcile does about versions, decided before anything is built.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Plan {
    pub target: Target,
    /// The running build (or the one about to be deployed) against its expiry.
    pub build: BuildState,
    pub build_version: String,
    /// The upgrade in progress, possibly begun by this plan.
    pub upgrade: Option<UpgradeStatus>,
    /// Whether `upgrade` was begun by this plan.
    pub began: bool,
    /// Whether this plan called the upgrade in progress off.
    pub rolled_back: bool,
    /// Why the target is not being moved to: (reason, message).
    pub blocker: Option<(&'static str, String)>,
    /// The version workloads run at when no upgrade is in progress.
    pub steady_version: String,
}

/// Whether `a` reads as a version newer than `b`.
pub fn newer(a: &str, b: &str) -> bool {
    matches!((catalog::Version::parse(a), catalog::Version::parse(b)), (Some(a), Some(b)) if a > b)
}

/// Versions compare as numbers everywhere: `2.53` is `2.53.0`, so writing it
/// either way starts no upgrade.
pub fn same_version(a: &str, b: &str) -> bool {
    match (catalog::Version::parse(a), catalog::Version::parse(b)) {
        (Some(x), Some(y)) => x == y,
        _ => a == b,
    }
}

pub fn before(spec: &UpgradeSpec) -> SignedDuration {
    policy::parse_before(&spec.before).unwrap_or(SignedDuration::from_hours(30 * 24))
}

/// What runs, beside what status records.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Running {
    /// The newest version the number's masters and coreapps are built for,
    /// read from the live workloads (`None` when there are none).
    pub live_version: Option<String>,
    /// The schema Job of the upgrade in progress, if one is.
    pub job: procedure::JobState,
    /// The media claim's record of an upgrade's schema Job begun and not
    /// seen to finish (see `ANNOTATION_SCHEMA_UPGRADE`).
    pub schema_upgrade: Option<SchemaUpgradeRecord>,
}

/// The record of an upgrade's schema Job on the media claim.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SchemaUpgradeRecord {
    /// The version it upgrades to.
    pub version: String,
    /// The upgrade that first wrote it ([`attempt`]; `None`: not said).
    pub began: Option<String>,
}

impl SchemaUpgradeRecord {
    /// The version, when another upgrade than `u` wrote the record for a
    /// version newer than `u` upgrades from: that upgrade's Job may have
    /// changed the schema already.
    pub fn earlier_than(&self, u: &UpgradeStatus) -> Option<&str> {
        let own = self.began.as_deref() == Some(attempt(u).as_str());
        (!own && newer(&self.version, &u.from)).then_some(self.version.as_str())
    }
}

/// Names one upgrade: when it began, to the second (as status keeps it).
pub fn attempt(u: &UpgradeStatus) -> String {
    began_at(u.started_at.0)
}

/// A beginning as the record of a schema Job names it: to the second.
pub fn began_at(t: Timestamp) -> String {
    Timestamp::from_second(t.as_second()).unwrap_or(t).to_string()
}

/// The version that runs: the newer of what status records and what the live
/// workloads are built for. Status can be lost (a restore without it, an
/// object re-created over running workloads); the workloads cannot, and a
/// database a newer build has upgraded never gets an older one.
pub fn running_version(recorded: Option<&str>, live: Option<&str>) -> Option<String> {
    match (recorded, live) {
        (Some(r), Some(l)) => match (catalog::Version::parse(r), catalog::Version::parse(l)) {
            (Some(rv), Some(lv)) if lv > rv => Some(l.to_string()),
            _ => Some(r.to_string()),
        },
        (r, l) => r.or(l).map(String::from),
    }
}

pub fn plan(
    spec: &UpgradeSpec,
    spec_version: &str,
    status: Option<&WhatsAppNumberStatus>,
    running: &Running,
    catalog: &Catalog,
    now: Timestamp,
) -> Plan {
    let before = before(spec);
    let current = running_version(status.and_then(|s| s.current_version.as_deref()), running.live_version.as_deref());
    let target = policy::target(spec_version, current.as_deref(), spec.policy, catalog, now, before);
    let build_version = current.clone().unwrap_or_else(|| target.version.clone());
    let build = policy::assess(catalog, &build_version, now, before);
    let in_progress = status.and_then(|s| s.upgrade.as_deref().cloned()).filter(|u| !procedure::is_done(u));

    let mut blocker = None;
    if let Some(wanted) = &target.refused_downgrade {
        blocker = Some((
            DOWNGRADE_REFUSED,
            format!(
                "spec.version {wanted} is older than the running {}: the database schema cannot go back, so {} keeps running",
                target.version, target.version
            ),
        ));
    } else if target.no_candidate {
        blocker = Some((
            NO_NEWER_RELEASE,
            // Said after the expiry in BuildExpiring's or BuildExpired's message.
            "the release catalog has no newer release that is not expiring itself, so none is upgraded to; add one to the catalog ConfigMap or set spec.version".to_string(),
        ));
    }

    // Called off: `spec.version` set back to the running version (under the
    // Manual policy, where the spec names the version), or paused.
    let mut rolled_back = false;
    let in_progress = match in_progress {
        Some(u) => {
            let reverted = spec.policy == UpgradePolicy::Manual && same_version(spec_version, &u.from);
            let why = if reverted {
                Some(format!("spec.version is {} again", u.from))
            } else {
                spec.paused.then(|| "spec.upgrade.paused is true".to_string())
            };
            // An earlier upgrade's schema Job (its object deleted during the
            // schema step) may have changed the schema: never called off.
            let earlier = running.schema_upgrade.as_ref().and_then(|r| r.earlier_than(&u)).map(String::from);
            match why {
                Some(why) if earlier.is_none() && procedure::can_roll_back(&u, &running.job) => {
                    rolled_back = true;
                    Some(procedure::roll_back(&u, &why, now))
                }
                Some(why) => {
                    let (reason, what) =
                        if reverted { (DOWNGRADE_REFUSED, "going back") } else { (UPGRADES_PAUSED, "pausing") };
                    let ran = match &earlier {
                        Some(v) => format!(
                            "an earlier upgrade's schema Job to {v} may have run on these databases (the media claim records it)"
                        ),
                        None => format!("the schema upgrade to {} has run or is running", u.to),
                    };
                    blocker = Some((
                        reason,
                        format!(
                            "{why}, but {ran}, so {what} is not possible: the upgrade finishes and {} runs; set spec.version to {}",
                            u.to, u.to
                        ),
                    ));
                    Some(u)
                }
                None => Some(u),
            }
        }
        None => None,
    };

    let (upgrade, began) = match (in_progress, &current) {
        (Some(u), _) => (Some(u), false),
        (None, Some(cur)) if !same_version(&target.version, cur) => {
            if spec.paused {
                blocker = Some((
                    UPGRADES_PAUSED,
                    format!("the upgrade from {cur} to {} waits: spec.upgrade.paused is true", target.version),
                ));
                (None, false)
            } else if !policy::in_window(spec.maintenance_window.as_deref(), now)
                && !matches!(build, BuildState::Expired(_))
            {
                blocker = Some((
                    OUTSIDE_WINDOW,
                    format!("the upgrade from {cur} to {} waits for the maintenance window", target.version),
                ));
                (None, false)
            } else {
                (Some(procedure::begin(cur, &target.version, now)), true)
            }
        }
        _ => (None, false),
    };
    Plan { steady_version: build_version.clone(), target, build, build_version, upgrade, began, rolled_back, blocker }
}

impl Plan {
    /// `spec.suspend` is set: an upgrade this plan would begin waits until
    /// the number runs again, since its steps start the nodes (one in
    /// progress runs to its end, as documented).
    pub fn hold_while_suspended(&mut self) {
        let Some(u) = self.upgrade.as_ref().filter(|_| self.began) else { return };
        self.blocker = Some((
            SUSPENDED,
            format!(
                "the upgrade from {} to {} waits: spec.suspend is true, and an upgrade starts the nodes",
                u.from, u.to
            ),
        ));
        self.upgrade = None;
        self.began = false;
    }

    /// The databases may be part-way to `begun`'s schema (see
    /// `plan::unfinished_schema_upgrade`): no upgrade begins and nothing
    /// older starts; `why` says what a person does.
    pub fn hold_for_unfinished_schema_upgrade(&mut self, why: String) {
        self.blocker = Some((SCHEMA_UPGRADE_UNFINISHED, why));
        if self.began {
            self.upgrade = None;
            self.began = false;
        }
    }

    /// The version this plan runs the nodes at once it is through: the
    /// upgrade's target, else the steady version.
    pub fn target_version(&self) -> &str {
        self.upgrade.as_ref().map_or(&self.steady_version, |u| &u.to)
    }

    /// The workloads this reconcile applies.
    pub fn shape(&self) -> Shape {
        match &self.upgrade {
            Some(u) => procedure::shape(u),
            None => Shape {
                node_version: self.steady_version.clone(),
                masters_running: true,
                coreapps_running: true,
                webapp_version: self.steady_version.clone(),
                webapps_running: true,
                schema_job: false,
            },
        }
    }

    pub fn build_status(&self) -> BuildStatus {
        build_status(&self.build_version, &self.build)
    }
}

/// The status block of a build.
pub fn build_status(version: &str, state: &BuildState) -> BuildStatus {
    let release = match state {
        BuildState::Valid(r) | BuildState::Expiring(r) | BuildState::Expired(r) => Some(r),
        BuildState::Unknown => None,
    };
    BuildStatus {
        version: version.to_string(),
        released_at: release.map(|r| r.released_at.to_string()),
        expires_at: release.map(|r| r.expires_at.to_string()),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_suspended_number_begins_no_upgrade_and_keeps_one_in_progress() {
        let began = Plan {
            target: policy::Target {
                version: "2.55.1".into(),
                auto_from: None,
                refused_downgrade: None,
                no_candidate: false,
            },
            build: BuildState::Unknown,
            build_version: "2.53.2".into(),
            upgrade: Some(procedure::begin("2.53.2", "2.55.1", Timestamp::from_second(0).unwrap())),
            began: true,
            rolled_back: false,
            blocker: None,
            steady_version: "2.53.2".into(),
        };
        let mut held = began.clone();
        held.hold_while_suspended();
        assert_eq!((held.upgrade.as_ref(), held.began), (None, false));
        let (reason, message) = held.blocker.clone().unwrap();
        assert_eq!(reason, SUSPENDED);
        assert!(message.contains("from 2.53.2 to 2.55.1"), "{message}");
        assert!(held.shape().masters_running, "the steady shape, which suspension then stops");
        let mut in_progress = Plan { began: false, ..began };
        in_progress.hold_while_suspended();
        assert!(in_progress.upgrade.is_some() && in_progress.blocker.is_none(), "one in progress runs to its end");
    }

    use super::*;
    use crate::api::MaintenanceWindow;

    use crate::fixtures::{at, catalog};

    fn status(current: &str) -> WhatsAppNumberStatus {
        WhatsAppNumberStatus { current_version: Some(current.into()), ..Default::default() }
    }

    #[test]
    fn fresh_install_runs_the_target_without_a_procedure() {
        let p =
            plan(&UpgradeSpec::default(), "2.53.2", None, &Running::default(), &catalog(), at("2024-02-01T00:00:00Z"));
        assert!(p.upgrade.is_none());
        assert_eq!(p.shape().node_version, "2.53.2");
        assert!(matches!(p.build, BuildState::Valid(_)));
        assert_eq!(p.build_status().expires_at.as_deref(), Some("2024-07-08"));
    }

    #[test]
    fn a_version_change_begins_an_upgrade_from_the_running_version() {
        let p = plan(
            &UpgradeSpec::default(),
            "2.55.1",
            Some(&status("2.53.2")),
            &Running::default(),
            &catalog(),
            at("2024-05-01T00:00:00Z"),
        );
        let u = p.upgrade.as_ref().unwrap();
        assert!(p.began);
        assert_eq!((u.from.as_str(), u.to.as_str(), u.step), ("2.53.2", "2.55.1", procedure::Step::StoppingNodes));
        let shape = p.shape();
        assert!(!shape.masters_running && !shape.coreapps_running);
        assert_eq!(shape.node_version, "2.53.2");
    }

    #[test]
    fn the_same_version_written_another_way_is_no_upgrade() {
        let p = plan(
            &UpgradeSpec::default(),
            "2.53",
            Some(&status("2.53.0")),
            &Running::default(),
            &catalog(),
            at("2024-05-01T00:00:00Z"),
        );
        assert!(p.upgrade.is_none() && !p.began, "{p:?}");
        assert!(same_version("v2.53.0", "2.53") && !same_version("2.53.1", "2.53"));
    }

    #[test]
    fn an_upgrade_in_progress_continues_whatever_the_spec_says_now() {
        let mut s = status("2.53.2");
        s.upgrade = Some(Box::new(UpgradeStatus {
            step: procedure::Step::StartingMasters,
            ..procedure::begin("2.53.2", "2.55.1", at("2024-05-01T00:00:00Z"))
        }));
        let spec = UpgradeSpec { paused: true, ..Default::default() };
        let p = plan(&spec, "2.53.2", Some(&s), &Running::default(), &catalog(), at("2024-05-01T00:10:00Z"));
        assert!(!p.began);
        assert_eq!(p.upgrade.as_ref().unwrap().step, procedure::Step::StartingMasters);
        assert_eq!(p.shape().node_version, "2.55.1");
    }

    #[test]
    fn pause_and_window_hold_a_new_upgrade() {
        let paused = UpgradeSpec { paused: true, ..Default::default() };
        let p = plan(
            &paused,
            "2.55.1",
            Some(&status("2.53.2")),
            &Running::default(),
            &catalog(),
            at("2024-05-01T00:00:00Z"),
        );
        assert!(p.upgrade.is_none());
        assert_eq!(p.blocker.as_ref().unwrap().0, UPGRADES_PAUSED);
        assert_eq!(p.shape().node_version, "2.53.2", "keeps running the current version");

        let window = UpgradeSpec {
            maintenance_window: Some(Box::new(MaintenanceWindow {
                days: vec!["Sun".into()],
                start_time: "02:00".into(),
                duration_minutes: 120,
            })),
            ..Default::default()
        };
        // 2024-05-01 is a Wednesday.
        let p = plan(
            &window,
            "2.55.1",
            Some(&status("2.53.2")),
            &Running::default(),
            &catalog(),
            at("2024-05-01T03:00:00Z"),
        );
        assert_eq!(p.blocker.as_ref().unwrap().0, OUTSIDE_WINDOW);
        let p = plan(
            &window,
            "2.55.1",
            Some(&status("2.53.2")),
            &Running::default(),
            &catalog(),
            at("2024-05-05T03:00:00Z"),
        );
        assert!(p.began, "Sunday 03:00 is inside");
        // An expired build does not wait for the window.
        let p = plan(
            &window,
            "2.55.1",
            Some(&status("2.53.2")),
            &Running::default(),
            &catalog(),
            at("2024-07-10T03:00:00Z"),
        );
        assert!(p.began);
    }

    #[test]
    fn auto_upgrades_an_expiring_build_and_reports_a_refused_downgrade() {
        let auto = UpgradeSpec { policy: UpgradePolicy::Auto, ..Default::default() };
        let p =
            plan(&auto, "2.53.2", Some(&status("2.53.2")), &Running::default(), &catalog(), at("2024-06-20T00:00:00Z"));
        assert_eq!(p.target.version, "2.55.1");
        assert_eq!(p.upgrade.unwrap().to, "2.55.1");
        assert!(matches!(p.build, BuildState::Expiring(_)));

        let p = plan(
            &UpgradeSpec::default(),
            "2.53.2",
            Some(&status("2.55.1")),
            &Running::default(),
            &catalog(),
            at("2024-05-01T00:00:00Z"),
        );
        assert!(p.upgrade.is_none());
        let (reason, message) = p.blocker.unwrap();
        assert_eq!(reason, DOWNGRADE_REFUSED);
        assert!(message.contains("cannot go back"));
    }

    #[test]
    fn unknown_versions_are_not_guessed() {
        let p =
            plan(&UpgradeSpec::default(), "2.99.1", None, &Running::default(), &catalog(), at("2024-05-01T00:00:00Z"));
        assert_eq!(p.build, BuildState::Unknown);
        assert_eq!(p.build_status().expires_at, None);
    }

    fn running(job: procedure::JobState) -> Running {
        Running { live_version: None, job, schema_upgrade: None }
    }

    #[test]
    fn the_running_version_is_the_newer_of_status_and_the_workloads() {
        assert_eq!(running_version(Some("2.53.2"), None).as_deref(), Some("2.53.2"));
        assert_eq!(running_version(None, Some("2.55.1")).as_deref(), Some("2.55.1"));
        assert_eq!(running_version(Some("2.53.2"), Some("2.55.1")).as_deref(), Some("2.55.1"));
        assert_eq!(running_version(Some("2.55.1"), Some("2.53.2")).as_deref(), Some("2.55.1"));
        assert_eq!(running_version(None, None), None);

        // Status lost: a version change is an upgrade from what runs, never a fresh install.
        let live = Running { live_version: Some("2.53.2".into()), ..Default::default() };
        let p = plan(&UpgradeSpec::default(), "2.55.1", None, &live, &catalog(), at("2024-05-01T00:00:00Z"));
        assert_eq!(p.upgrade.as_ref().map(|u| u.from.as_str()), Some("2.53.2"), "{p:?}");
        // ... and an older spec.version is refused, not started on the upgraded database.
        let live = Running { live_version: Some("2.55.1".into()), ..Default::default() };
        let p = plan(&UpgradeSpec::default(), "2.53.2", None, &live, &catalog(), at("2024-05-01T00:00:00Z"));
        assert!(p.upgrade.is_none());
        assert_eq!(p.blocker.as_ref().map(|b| b.0), Some(DOWNGRADE_REFUSED));
        assert_eq!(p.shape().node_version, "2.55.1");
    }

    fn in_progress(step: procedure::Step) -> WhatsAppNumberStatus {
        let mut s = status("2.53.2");
        s.upgrade =
            Some(Box::new(UpgradeStatus { step, ..procedure::begin("2.53.2", "2.55.1", at("2024-05-01T00:00:00Z")) }));
        s
    }

    #[test]
    fn reverting_the_version_before_the_schema_upgrade_rolls_back() {
        use procedure::{JobState, Step};
        let now = at("2024-05-01T00:05:00Z");
        let s = in_progress(Step::UpgradingSchema);
        let unpullable = running(JobState::Unstartable("image coreapp:v2.55.1: ErrImagePull".into()));
        let p = plan(&UpgradeSpec::default(), "2.53.2", Some(&s), &unpullable, &catalog(), now);
        assert!(p.rolled_back && p.blocker.is_none(), "{p:?}");
        let u = p.upgrade.as_ref().unwrap();
        assert_eq!(u.step, Step::RolledBack);
        let shape = p.shape();
        assert!(shape.masters_running && shape.coreapps_running && !shape.schema_job);
        assert_eq!(shape.node_version, "2.53.2");

        // Paused while the nodes stop: rolled back too.
        let paused = UpgradeSpec { paused: true, ..Default::default() };
        let p = plan(&paused, "2.55.1", Some(&in_progress(Step::StoppingNodes)), &Running::default(), &catalog(), now);
        assert!(p.rolled_back);
        // Rolled back and still paused: no new upgrade begins.
        let mut after = status("2.53.2");
        after.upgrade = p.upgrade.clone().map(Box::new);
        let p = plan(&paused, "2.55.1", Some(&after), &Running::default(), &catalog(), now);
        assert!(p.upgrade.is_none() && !p.began);
        assert_eq!(p.blocker.as_ref().map(|b| b.0), Some(UPGRADES_PAUSED));
    }

    #[test]
    fn an_upgrade_over_an_earlier_ones_unfinished_schema_job_is_never_called_off() {
        use procedure::{JobState, Step};
        let now = at("2024-05-01T00:05:00Z");
        let record = |began: Option<String>| SchemaUpgradeRecord { version: "2.55.1".into(), began };
        // Re-created at 2.53.2 over databases whose upgrade to 2.55.1 an
        // earlier object began; the spec now asks for 2.55.1.
        let over = Running {
            live_version: Some("2.53.2".into()),
            schema_upgrade: Some(record(Some("2024-04-01T00:00:00Z".into()))),
            ..Default::default()
        };
        let p = plan(&UpgradeSpec::default(), "2.55.1", None, &over, &catalog(), now);
        assert!(p.began);
        let u = p.upgrade.clone().expect("begun");
        // Set back, or paused, before its own Job was made: refused, since
        // the earlier Job may have run.
        let mut s = status("2.53.2");
        s.upgrade = Some(Box::new(u.clone()));
        let running = Running { job: JobState::Absent, ..over.clone() };
        let back = plan(&UpgradeSpec::default(), "2.53.2", Some(&s), &running, &catalog(), now);
        assert!(!back.rolled_back, "{back:?}");
        assert_eq!(back.upgrade.as_ref().map(|u| u.step), Some(Step::StoppingNodes));
        let (reason, message) = back.blocker.clone().expect("refused");
        assert_eq!(reason, DOWNGRADE_REFUSED);
        assert!(message.contains("an earlier upgrade's schema Job to 2.55.1 may have run"), "{message}");
        let paused = UpgradeSpec { paused: true, ..Default::default() };
        assert!(!plan(&paused, "2.55.1", Some(&s), &running, &catalog(), now).rolled_back);
        // The same record unnamed (`began` not said) is an earlier one too.
        let unnamed = Running { schema_upgrade: Some(record(None)), ..running.clone() };
        assert!(!plan(&UpgradeSpec::default(), "2.53.2", Some(&s), &unnamed, &catalog(), now).rolled_back);

        // Its own record (written as its Job was made) does not keep it
        // from being called off, nor does a record no newer than 2.53.2.
        let own = Running { schema_upgrade: Some(record(Some(attempt(&u)))), ..running.clone() };
        assert!(plan(&UpgradeSpec::default(), "2.53.2", Some(&s), &own, &catalog(), now).rolled_back);
        let stale = SchemaUpgradeRecord { version: "2.53.2".into(), began: None };
        let stale = Running { schema_upgrade: Some(stale), ..running };
        assert!(plan(&UpgradeSpec::default(), "2.53.2", Some(&s), &stale, &catalog(), now).rolled_back);
    }

    #[test]
    fn an_upgrade_is_named_by_its_beginning_to_the_second() {
        let u = procedure::begin("2.53.2", "2.55.1", Timestamp::from_second(1_714_521_900).unwrap());
        let precise = UpgradeStatus {
            started_at: k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                Timestamp::new(1_714_521_900, 250_000_000).unwrap(),
            ),
            ..u.clone()
        };
        assert_eq!(attempt(&u), "2024-05-01T00:05:00Z");
        assert_eq!(attempt(&precise), attempt(&u), "status keeps whole seconds");
    }

    #[test]
    fn once_the_schema_upgrade_ran_going_back_is_refused_and_the_upgrade_finishes() {
        use procedure::{JobState, Step};
        let now = at("2024-05-01T00:05:00Z");
        let at_work = plan(
            &UpgradeSpec::default(),
            "2.53.2",
            Some(&in_progress(Step::UpgradingSchema)),
            &running(JobState::running()),
            &catalog(),
            now,
        );
        assert!(!at_work.rolled_back);
        assert_eq!(at_work.upgrade.as_ref().unwrap().step, Step::UpgradingSchema);
        let (reason, message) = at_work.blocker.clone().unwrap();
        assert_eq!(reason, DOWNGRADE_REFUSED);
        assert!(message.contains("set spec.version to 2.55.1"), "{message}");

        let started = plan(
            &UpgradeSpec::default(),
            "2.53.2",
            Some(&in_progress(Step::StartingMasters)),
            &running(JobState::Succeeded),
            &catalog(),
            now,
        );
        assert_eq!(started.upgrade.as_ref().unwrap().step, Step::StartingMasters);
        assert_eq!(started.shape().node_version, "2.55.1");

        // Under Auto the spec's version is a floor: it names no rollback.
        let auto = UpgradeSpec { policy: UpgradePolicy::Auto, ..Default::default() };
        let p = plan(&auto, "2.53.2", Some(&in_progress(Step::StoppingNodes)), &Running::default(), &catalog(), now);
        assert!(!p.rolled_back);
    }
}
