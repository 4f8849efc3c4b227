//! Which version a WhatsAppNumber should run, and when it may move there. Pure.

use jiff::civil::{Time, Weekday};
use jiff::tz::TimeZone;
use jiff::{SignedDuration, Timestamp};

use super::catalog::{Catalog, Release, Version};
use crate::api::{MaintenanceWindow, UpgradePolicy};

/// Where a build stands against its expiry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BuildState {
    /// The catalog does not know the version.
    Unknown,
    Valid(Release),
    /// Inside the warning window: expires within `before`.
    Expiring(Release),
    Expired(Release),
}

pub fn assess(catalog: &Catalog, version: &str, now: Timestamp, before: SignedDuration) -> BuildState {
    let Some(release) = catalog.lookup(version).cloned() else { return BuildState::Unknown };
    let expires = release.expires_instant();
    if now >= expires {
        BuildState::Expired(release)
    } else if now + before >= expires {
        BuildState::Expiring(release)
    } else {
        BuildState::Valid(release)
    }
}

/// The version to run and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    pub version: String,
    /// Set when `Auto` chose a version newer than the spec's.
    pub auto_from: Option<String>,
    /// Set when the wanted version is older than the running one: refused,
    /// since the schema cannot go back; the running version stays the target.
    pub refused_downgrade: Option<String>,
    /// Set when `Auto` found the running build expiring but no better release.
    pub no_candidate: bool,
}

/// `Manual`: the spec's version. `Auto`: when the running build is expiring or
/// expired, the newest catalog release that is not itself expiring (never
/// older than the spec's version). Never a downgrade of what runs.
pub fn target(
    spec_version: &str,
    current: Option<&str>,
    policy: UpgradePolicy,
    catalog: &Catalog,
    now: Timestamp,
    before: SignedDuration,
) -> Target {
    let mut wanted = spec_version.to_string();
    let mut auto_from = None;
    let mut no_candidate = false;
    let running = current.unwrap_or(spec_version);
    if policy == UpgradePolicy::Auto
        && matches!(assess(catalog, running, now, before), BuildState::Expiring(_) | BuildState::Expired(_))
    {
        let floor = Version::parse(spec_version).max(Version::parse(running));
        let best = catalog
            .releases()
            // Only full versions make image tags; a major.minor entry names no build.
            .filter(|r| r.version.to_string().split('.').count() == 3)
            .filter(|r| matches!(assess(catalog, &r.version.to_string(), now, before), BuildState::Valid(_)))
            .filter(|r| floor.as_ref().is_none_or(|f| &r.version > f))
            .max_by(|a, b| a.version.cmp(&b.version));
        match best {
            Some(r) => {
                auto_from = Some(spec_version.to_string());
                wanted = r.version.to_string();
            }
            None => no_candidate = true,
        }
    }
    let refused_downgrade = match (current.and_then(Version::parse), Version::parse(&wanted)) {
        // Under Auto the spec's version is a floor the operator may have moved
        // past: staying on the newer build is the policy, not a refusal.
        (Some(cur), Some(want)) if want < cur && policy == UpgradePolicy::Auto => {
            wanted = current.unwrap_or_default().to_string();
            None
        }
        (Some(cur), Some(want)) if want < cur => Some(std::mem::replace(&mut wanted, current.unwrap().to_string())),
        _ => None,
    };
    Target { version: wanted, auto_from, refused_downgrade, no_candidate }
}

/// Whether `now` falls in the window; no window means any time.
pub fn in_window(window: Option<&MaintenanceWindow>, now: Timestamp) -> bool {
    let Some(w) = window else { return true };
    let Some(start) = parse_time(&w.start_time) else { return false };
    let duration = SignedDuration::from_mins(i64::from(w.duration_minutes));
    let today = now.to_zoned(TimeZone::UTC).date();
    // A window that started yesterday may still be open (it can cross midnight).
    for day in [today.yesterday().ok(), Some(today)].into_iter().flatten() {
        if !w.days.is_empty() && !w.days.iter().any(|d| weekday(d) == Some(day.weekday())) {
            continue;
        }
        let Ok(opens) = day.at(start.hour(), start.minute(), 0, 0).to_zoned(TimeZone::UTC) else { continue };
        let opens = opens.timestamp();
        if now >= opens && now < opens + duration {
            return true;
        }
    }
    false
}

/// When the window next opens after `now` (within a week); `None` without a
/// window or with one that never opens. A reconcile is due then, so that a
/// window shorter than the resync interval is not missed.
pub fn next_opening(window: Option<&MaintenanceWindow>, now: Timestamp) -> Option<Timestamp> {
    let w = window?;
    let start = parse_time(&w.start_time)?;
    let today = now.to_zoned(TimeZone::UTC).date();
    (0..=7)
        .filter_map(|n| today.checked_add(jiff::Span::new().days(n)).ok())
        .filter(|day| w.days.is_empty() || w.days.iter().any(|d| weekday(d) == Some(day.weekday())))
        .filter_map(|day| day.at(start.hour(), start.minute(), 0, 0).to_zoned(TimeZone::UTC).ok())
        .map(|opens| opens.timestamp())
        .find(|opens| *opens > now)
}

fn parse_time(s: &str) -> Option<Time> {
    let (h, m) = s.split_once(':')?;
    Time::new(h.parse().ok()?, m.parse().ok()?, 0, 0).ok()
}

fn weekday(d: &str) -> Option<Weekday> {
    Some(match d {
        "Mon" => Weekday::Monday,
        "Tue" => Weekday::Tuesday,
        "Wed" => Weekday::Wednesday,
        "Thu" => Weekday::Thursday,
        "Fri" => Weekday::Friday,
        "Sat" => Weekday::Saturday,
        "Sun" => Weekday::Sunday,
        _ => return None,
    })
}

/// `30d`, `12h`, `90m` -> a duration.
pub fn parse_before(s: &str) -> Option<SignedDuration> {
    let (n, unit) = s.split_at(s.len().checked_sub(1)?);
    let n: i64 = n.parse().ok()?;
    Some(match unit {
        "d" => SignedDuration::from_hours(n * 24),
        "h" => SignedDuration::from_hours(n),
        "m" => SignedDuration::from_mins(n),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::fixtures::at;

    fn catalog() -> Catalog {
        crate::fixtures::catalog_with(
            "- {version: \"2.57.2\", releasedAt: \"2024-07-10\"}\n- {version: \"2.57\", releasedAt: \"2024-08-01\"}\n",
        )
    }

    const DAYS30: SignedDuration = SignedDuration::from_hours(30 * 24);

    #[test]
    fn build_states() {
        let c = catalog();
        // 2.53.2 expires 2024-07-08.
        assert!(matches!(assess(&c, "2.53.2", at("2024-05-01T00:00:00Z"), DAYS30), BuildState::Valid(_)));
        assert!(matches!(assess(&c, "2.53.2", at("2024-06-10T00:00:00Z"), DAYS30), BuildState::Expiring(_)));
        assert!(matches!(assess(&c, "2.53.2", at("2024-07-08T00:00:00Z"), DAYS30), BuildState::Expired(_)));
        assert_eq!(assess(&c, "2.99.1", at("2024-05-01T00:00:00Z"), DAYS30), BuildState::Unknown);
    }

    #[test]
    fn manual_follows_the_spec() {
        let c = catalog();
        let t = target("2.55.1", Some("2.53.2"), UpgradePolicy::Manual, &c, at("2024-06-20T00:00:00Z"), DAYS30);
        assert_eq!((t.version.as_str(), t.auto_from.as_deref()), ("2.55.1", None));
        let t = target("2.53.2", Some("2.53.2"), UpgradePolicy::Manual, &c, at("2024-06-20T00:00:00Z"), DAYS30);
        assert_eq!(t.version, "2.53.2", "Manual only warns");
    }

    #[test]
    fn auto_picks_the_newest_release_that_is_not_expiring() {
        let c = catalog();
        // Outside the window: nothing to do.
        let t = target("2.53.2", Some("2.53.2"), UpgradePolicy::Auto, &c, at("2024-05-01T00:00:00Z"), DAYS30);
        assert_eq!(t.version, "2.53.2");
        // Inside: 2.57.2 (expires 2025-01-06) is the newest full version; 2.57 names no build.
        let t = target("2.53.2", Some("2.53.2"), UpgradePolicy::Auto, &c, at("2024-06-20T00:00:00Z"), DAYS30);
        assert_eq!((t.version.as_str(), t.auto_from.as_deref()), ("2.57.2", Some("2.53.2")));
        // Later: 2.55.1 expires 2024-10-07 and is expiring itself by 2024-09-20; 2.57.2 still fine.
        let t = target("2.55.1", Some("2.55.1"), UpgradePolicy::Auto, &c, at("2024-09-20T00:00:00Z"), DAYS30);
        assert_eq!(t.version, "2.57.2");
        // Everything expiring: stay, and say so.
        let t = target("2.57.2", Some("2.57.2"), UpgradePolicy::Auto, &c, at("2024-12-20T00:00:00Z"), DAYS30);
        assert_eq!(t.version, "2.57.2");
        assert!(t.no_candidate);
        // An expired build is upgraded too.
        let t = target("2.53.2", Some("2.53.2"), UpgradePolicy::Auto, &c, at("2024-07-20T00:00:00Z"), DAYS30);
        assert_eq!(t.version, "2.57.2");
    }

    #[test]
    fn auto_keeps_the_build_it_moved_to() {
        let c = catalog();
        let t = target("2.53.2", Some("2.57.2"), UpgradePolicy::Auto, &c, at("2024-07-20T00:00:00Z"), DAYS30);
        assert_eq!((t.version.as_str(), t.refused_downgrade.as_ref()), ("2.57.2", None));
    }

    #[test]
    fn downgrades_are_refused() {
        let c = catalog();
        let t = target("2.53.2", Some("2.55.1"), UpgradePolicy::Manual, &c, at("2024-05-01T00:00:00Z"), DAYS30);
        assert_eq!(t.version, "2.55.1");
        assert_eq!(t.refused_downgrade.as_deref(), Some("2.53.2"));
    }

    #[test]
    fn maintenance_windows() {
        let w = |days: &[&str], start: &str, minutes: i32| MaintenanceWindow {
            days: days.iter().map(|d| d.to_string()).collect(),
            start_time: start.into(),
            duration_minutes: minutes,
        };
        // 2024-06-15 is a Saturday.
        let sat_0230 = at("2024-06-15T02:30:00Z");
        assert!(in_window(None, sat_0230));
        assert!(in_window(Some(&w(&["Sat"], "02:00", 60)), sat_0230));
        assert!(!in_window(Some(&w(&["Sat"], "02:00", 20)), sat_0230));
        assert!(!in_window(Some(&w(&["Sun"], "02:00", 60)), sat_0230));
        assert!(in_window(Some(&w(&[], "02:00", 60)), sat_0230), "no days means every day");
        // Crossing midnight: Friday 23:00 for 4 hours covers Saturday 02:30.
        assert!(in_window(Some(&w(&["Fri"], "23:00", 240)), sat_0230));
        assert!(!in_window(Some(&w(&["Fri"], "bad", 240)), sat_0230));

        // The next opening: later today, or on the next day the window names.
        assert_eq!(next_opening(None, sat_0230), None);
        assert_eq!(next_opening(Some(&w(&[], "03:00", 1)), sat_0230), Some(at("2024-06-15T03:00:00Z")));
        assert_eq!(next_opening(Some(&w(&[], "02:00", 60)), sat_0230), Some(at("2024-06-16T02:00:00Z")));
        assert_eq!(next_opening(Some(&w(&["Mon"], "01:00", 5)), sat_0230), Some(at("2024-06-17T01:00:00Z")));
        assert_eq!(next_opening(Some(&w(&["Sat"], "01:00", 5)), sat_0230), Some(at("2024-06-22T01:00:00Z")));
        assert_eq!(next_opening(Some(&w(&["Sat"], "bad", 5)), sat_0230), None);
    }

    #[test]
    fn before_durations() {
        assert_eq!(parse_before("30d"), Some(DAYS30));
        assert_eq!(parse_before("12h"), Some(SignedDuration::from_hours(12)));
        assert_eq!(parse_before("90m"), Some(SignedDuration::from_mins(90)));
        assert_eq!(parse_before("soon"), None);
        assert_eq!(parse_before(""), None);
    }
}
