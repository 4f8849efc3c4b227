//! Build expiry and upgrades: the release catalog, the policy that picks the
//! version to run, and the step-by-step upgrade procedure.

pub mod catalog;
pub mod policy;
pub mod procedure;

use jiff::{SignedDuration, Timestamp};

use crate::api::{BuildStatus, UpgradeSpec, UpgradeStatus, WhatsAppNumberStatus};
use catalog::Catalog;
use policy::{BuildState, Target};
use procedure::Shape;

pub const DOWNGRADE_REFUSED: &str = "DowngradeRefused";
pub const UPGRADES_PAUSED: &str = "UpgradesPaused";
pub const OUTSIDE_WINDOW: &str = "OutsideMaintenanceWindow";
pub const NO_NEWER_RELEASE: &str = "NoNewerRelease";

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
    /// Why the target is not being moved to: (reason, message).
    pub blocker: Option<(&'static str, String)>,
    /// The version workloads run at when no upgrade is in progress.
    pub steady_version: String,
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

pub fn plan(
    spec: &UpgradeSpec,
    spec_version: &str,
    status: Option<&WhatsAppNumberStatus>,
    catalog: &Catalog,
    now: Timestamp,
) -> Plan {
    let before = before(spec);
    let current = status.and_then(|s| s.current_version.clone());
    let target = policy::target(spec_version, current.as_deref(), spec.policy, catalog, now, before);
    let build_version = current.clone().unwrap_or_else(|| target.version.clone());
    let build = policy::assess(catalog, &build_version, now, before);
    let in_progress = status.and_then(|s| s.upgrade.clone()).filter(|u| !procedure::is_done(u));

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
            format!(
                "{build_version} is expiring but the release catalog has no newer release that is not expiring itself; add one to the catalog ConfigMap or set spec.version"
            ),
        ));
    }

    let (upgrade, began) = match (in_progress, &current) {
        (Some(u), _) => (Some(u), false),
        (None, Some(cur)) if !same_version(&target.version, cur) => {
            if spec.paused {
                blocker = Some((
                    UPGRADES_PAUSED,
                    format!("the upgrade from {cur} to {} waits: spec.upgrade.paused is true", target.version),
                ));
                (None, false)
            } else if !policy::in_window(spec.maintenance_window.as_ref(), now)
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
    Plan { steady_version: build_version.clone(), target, build, build_version, upgrade, began, blocker }
}

impl Plan {
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
    use super::*;
    use crate::api::{MaintenanceWindow, UpgradePolicy};

    fn at(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    fn catalog() -> Catalog {
        Catalog::with_overrides(Some(
            "- {version: \"2.53.2\", releasedAt: \"2024-01-10\"}\n- {version: \"2.55.1\", releasedAt: \"2024-04-10\"}\n",
        ))
    }

    fn status(current: &str) -> WhatsAppNumberStatus {
        WhatsAppNumberStatus { current_version: Some(current.into()), ..Default::default() }
    }

    #[test]
    fn fresh_install_runs_the_target_without_a_procedure() {
        let p = plan(&UpgradeSpec::default(), "2.53.2", None, &catalog(), at("2024-02-01T00:00:00Z"));
        assert!(p.upgrade.is_none());
        assert_eq!(p.shape().node_version, "2.53.2");
        assert!(matches!(p.build, BuildState::Valid(_)));
        assert_eq!(p.build_status().expires_at.as_deref(), Some("2024-07-08"));
    }

    #[test]
    fn a_version_change_begins_an_upgrade_from_the_running_version() {
        let p =
            plan(&UpgradeSpec::default(), "2.55.1", Some(&status("2.53.2")), &catalog(), at("2024-05-01T00:00:00Z"));
        let u = p.upgrade.as_ref().unwrap();
        assert!(p.began);
        assert_eq!((u.from.as_str(), u.to.as_str(), u.step.as_str()), ("2.53.2", "2.55.1", "StoppingNodes"));
        let shape = p.shape();
        assert!(!shape.masters_running && !shape.coreapps_running);
        assert_eq!(shape.node_version, "2.53.2");
    }

    #[test]
    fn the_same_version_written_another_way_is_no_upgrade() {
        let p = plan(&UpgradeSpec::default(), "2.53", Some(&status("2.53.0")), &catalog(), at("2024-05-01T00:00:00Z"));
        assert!(p.upgrade.is_none() && !p.began, "{p:?}");
        assert!(same_version("v2.53.0", "2.53") && !same_version("2.53.1", "2.53"));
    }

    #[test]
    fn an_upgrade_in_progress_continues_whatever_the_spec_says_now() {
        let mut s = status("2.53.2");
        s.upgrade = Some(UpgradeStatus {
            step: "StartingMasters".into(),
            ..procedure::begin("2.53.2", "2.55.1", at("2024-05-01T00:00:00Z"))
        });
        let spec = UpgradeSpec { paused: true, ..Default::default() };
        let p = plan(&spec, "2.53.2", Some(&s), &catalog(), at("2024-05-01T00:10:00Z"));
        assert!(!p.began);
        assert_eq!(p.upgrade.as_ref().unwrap().step, "StartingMasters");
        assert_eq!(p.shape().node_version, "2.55.1");
    }

    #[test]
    fn pause_and_window_hold_a_new_upgrade() {
        let paused = UpgradeSpec { paused: true, ..Default::default() };
        let p = plan(&paused, "2.55.1", Some(&status("2.53.2")), &catalog(), at("2024-05-01T00:00:00Z"));
        assert!(p.upgrade.is_none());
        assert_eq!(p.blocker.as_ref().unwrap().0, UPGRADES_PAUSED);
        assert_eq!(p.shape().node_version, "2.53.2", "keeps running the current version");

        let window = UpgradeSpec {
            maintenance_window: Some(MaintenanceWindow {
                days: vec!["Sun".into()],
                start_time: "02:00".into(),
                duration_minutes: 120,
            }),
            ..Default::default()
        };
        // 2024-05-01 is a Wednesday.
        let p = plan(&window, "2.55.1", Some(&status("2.53.2")), &catalog(), at("2024-05-01T03:00:00Z"));
        assert_eq!(p.blocker.as_ref().unwrap().0, OUTSIDE_WINDOW);
        let p = plan(&window, "2.55.1", Some(&status("2.53.2")), &catalog(), at("2024-05-05T03:00:00Z"));
        assert!(p.began, "Sunday 03:00 is inside");
        // An expired build does not wait for the window.
        let p = plan(&window, "2.55.1", Some(&status("2.53.2")), &catalog(), at("2024-07-10T03:00:00Z"));
        assert!(p.began);
    }

    #[test]
    fn auto_upgrades_an_expiring_build_and_reports_a_refused_downgrade() {
        let auto = UpgradeSpec { policy: UpgradePolicy::Auto, ..Default::default() };
        let p = plan(&auto, "2.53.2", Some(&status("2.53.2")), &catalog(), at("2024-06-20T00:00:00Z"));
        assert_eq!(p.target.version, "2.55.1");
        assert_eq!(p.upgrade.unwrap().to, "2.55.1");
        assert!(matches!(p.build, BuildState::Expiring(_)));

        let p =
            plan(&UpgradeSpec::default(), "2.53.2", Some(&status("2.55.1")), &catalog(), at("2024-05-01T00:00:00Z"));
        assert!(p.upgrade.is_none());
        let (reason, message) = p.blocker.unwrap();
        assert_eq!(reason, DOWNGRADE_REFUSED);
        assert!(message.contains("cannot go back"));
    }

    #[test]
    fn unknown_versions_are_not_guessed() {
        let p = plan(&UpgradeSpec::default(), "2.99.1", None, &catalog(), at("2024-05-01T00:00:00Z"));
        assert_eq!(p.build, BuildState::Unknown);
        assert_eq!(p.build_status().expires_at, None);
    }
}
