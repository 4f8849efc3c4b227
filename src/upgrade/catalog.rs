//! The release catalog: when each client build was released and when it
//! expires. Built-in entries come from Meta's changelog; a ConfigMap that users
//! manage (with GitOps) adds releases and overrides dates. A bad entry is
//! reported and skipped, never fatal.

use std::cmp::Ordering;
use std::collections::BTreeMap;
use std::fmt;

use jiff::civil::Date;
use jiff::{Timestamp, ToSpan, tz::TimeZone};

/// Key of the catalog in the ConfigMap.
pub const CONFIGMAP_KEY: &str = "catalog.yaml";

/// "All builds ... have an expiry of 6 months from the date of release";
/// Meta's own example (v2.37.2: 2022-03-26 -> 2022-09-22) is 180 days.
pub const LIFETIME_DAYS: i32 = 180;

/// Releases with a date in Meta's changelog (docs/client.md). Later versions
/// (2.45 onwards) have no published date here: add them through the ConfigMap.
const BUILT_IN: &[(&str, &str, Option<&str>)] = &[
    ("2.37.2", "2022-03-26", Some("2022-09-22")),
    ("2.39.1", "2022-02-01", None),
    ("2.39.2", "2022-03-04", None),
    ("2.39.3", "2022-03-25", None),
    ("2.39.4", "2022-05-10", None),
    ("2.41.2", "2022-06-27", None),
    ("2.41.3", "2022-09-19", None),
    ("2.43", "2022-10-11", None),
];

/// A client version such as `2.53.2`; `2.43` compares equal to `2.43.0`.
#[derive(Clone, Debug)]
pub struct Version(Vec<u32>);

impl PartialEq for Version {
    fn eq(&self, other: &Self) -> bool {
        self.padded() == other.padded()
    }
}

impl Eq for Version {}

impl Version {
    pub fn parse(s: &str) -> Option<Self> {
        let s = s.strip_prefix('v').unwrap_or(s);
        let parts: Option<Vec<u32>> = s.split('.').map(|p| p.parse().ok()).collect();
        parts.filter(|p| (2..=3).contains(&p.len())).map(Version)
    }

    fn padded(&self) -> [u32; 3] {
        [self.0[0], self.0[1], self.0.get(2).copied().unwrap_or(0)]
    }

    /// `major.minor`, for entries that cover every patch release.
    fn minor(&self) -> Version {
        Version(self.0[..2].to_vec())
    }
}

impl Ord for Version {
    fn cmp(&self, other: &Self) -> Ordering {
        self.padded().cmp(&other.padded())
    }
}

impl PartialOrd for Version {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parts: Vec<String> = self.0.iter().map(u32::to_string).collect();
        f.write_str(&parts.join("."))
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Release {
    pub version: Version,
    pub released_at: Date,
    pub expires_at: Date,
}

impl Release {
    /// The first instant at which the build no longer works (start of the expiry day, UTC).
    pub fn expires_instant(&self) -> Timestamp {
        self.expires_at.to_zoned(TimeZone::UTC).map(|z| z.timestamp()).unwrap_or(Timestamp::MAX)
    }
}

/// Every release the operator knows, by version.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Catalog {
    releases: BTreeMap<String, Release>,
    /// Entries of the ConfigMap that were skipped, with why.
    pub problems: Vec<String>,
}

fn release(version: &str, released: &str, expires: Option<&str>) -> Result<Release, String> {
    let v = Version::parse(version).ok_or_else(|| format!("version {version:?} is not like 2.53.2"))?;
    let released_at: Date = released.parse().map_err(|e| format!("releasedAt {released:?}: {e}"))?;
    let expires_at = match expires {
        Some(e) => e.parse().map_err(|err| format!("expiresAt {e:?}: {err}"))?,
        None => released_at.checked_add(LIFETIME_DAYS.days()).map_err(|e| e.to_string())?,
    };
    if expires_at <= released_at {
        return Err(format!("expiresAt {expires_at} is not after releasedAt {released_at}"));
    }
    Ok(Release { version: v, released_at, expires_at })
}

impl Catalog {
    pub fn built_in() -> Self {
        let mut c = Catalog::default();
        for (v, r, e) in BUILT_IN {
            let rel = release(v, r, *e).expect("built-in entries are valid");
            c.releases.insert(rel.version.to_string(), rel);
        }
        c
    }

    /// The built-in catalog extended by the ConfigMap's `catalog.yaml`: a YAML
    /// list of `{version, releasedAt, expiresAt?}`. Entries override built-in
    /// ones of the same version; bad entries land in `problems`.
    pub fn with_overrides(yaml: Option<&str>) -> Self {
        let mut c = Self::built_in();
        let Some(yaml) = yaml.filter(|y| !y.trim().is_empty()) else { return c };
        let entries: Vec<serde_json::Value> = match serde_saphyr::from_str(yaml) {
            Ok(serde_json::Value::Array(items)) => items,
            Ok(_) => {
                c.problems.push(format!("{CONFIGMAP_KEY} must be a list of {{version, releasedAt, expiresAt}}"));
                return c;
            }
            Err(e) => {
                c.problems.push(format!("{CONFIGMAP_KEY} is not valid YAML: {e}"));
                return c;
            }
        };
        for (i, entry) in entries.iter().enumerate() {
            let field = |k: &str| match entry.get(k) {
                Some(serde_json::Value::String(s)) => Some(s.clone()),
                Some(serde_json::Value::Number(n)) => Some(n.to_string()),
                _ => None,
            };
            let parsed = match (field("version"), field("releasedAt")) {
                (Some(v), Some(r)) => release(&v, &r, field("expiresAt").as_deref()),
                _ => Err("needs version and releasedAt".to_string()),
            };
            match parsed {
                Ok(rel) => {
                    c.releases.insert(rel.version.to_string(), rel);
                }
                Err(why) => {
                    c.problems.push(format!("entry {} ({}): {why}", i + 1, field("version").unwrap_or_default()))
                }
            }
        }
        c
    }

    /// The release of a version: an exact entry, else a `major.minor` entry.
    pub fn lookup(&self, version: &str) -> Option<&Release> {
        let v = Version::parse(version)?;
        self.releases.get(&v.to_string()).or_else(|| self.releases.get(&v.minor().to_string()))
    }

    pub fn releases(&self) -> impl Iterator<Item = &Release> {
        self.releases.values()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn built_in_dates_follow_the_changelog() {
        let c = Catalog::built_in();
        let r = c.lookup("2.37.2").unwrap();
        assert_eq!(r.expires_at.to_string(), "2022-09-22", "Meta's own example");
        let r = c.lookup("2.41.3").unwrap();
        assert_eq!((r.released_at.to_string(), r.expires_at.to_string()), ("2022-09-19".into(), "2023-03-18".into()));
        assert!(c.lookup("2.43.7").is_some(), "a major.minor entry covers its patches");
        assert!(c.lookup("2.53.2").is_none(), "no guessing for versions without a date");
        assert!(c.problems.is_empty());
    }

    #[test]
    fn versions_order_numerically() {
        let v = |s| Version::parse(s).unwrap();
        assert!(v("2.53.10") > v("2.53.2"));
        assert!(v("2.100") > v("2.99.9"));
        assert_eq!(v("2.43"), v("2.43.0"));
        assert_eq!(v("v2.53.2").to_string(), "2.53.2");
        assert!(Version::parse("latest").is_none() && Version::parse("2").is_none());
    }

    #[test]
    fn configmap_entries_extend_and_override_bad_ones_are_reported() {
        let yaml = r#"
- version: "2.53.2"
  releasedAt: "2024-01-10"
- version: "2.41.3"
  releasedAt: "2022-09-19"
  expiresAt: "2023-06-01"
- version: "not-a-version"
  releasedAt: "2024-01-10"
- version: "2.55.1"
  releasedAt: "2024-13-40"
- version: "2.57.2"
- version: "2.58.0"
  releasedAt: "2024-05-01"
  expiresAt: "2024-04-01"
"#;
        let c = Catalog::with_overrides(Some(yaml));
        assert_eq!(c.lookup("2.53.2").unwrap().expires_at.to_string(), "2024-07-08");
        assert_eq!(c.lookup("2.41.3").unwrap().expires_at.to_string(), "2023-06-01", "override wins");
        assert_eq!(c.problems.len(), 4, "{:?}", c.problems);
        assert!(c.problems[0].contains("entry 3"));
        assert!(c.lookup("2.55.1").is_none() && c.lookup("2.57.2").is_none() && c.lookup("2.58.0").is_none());
        assert!(c.lookup("2.39.1").is_some(), "built-in entries stay");
    }

    #[test]
    fn a_broken_document_keeps_the_built_in_catalog() {
        for bad in ["{not: [valid", "just: a map"] {
            let c = Catalog::with_overrides(Some(bad));
            assert_eq!(c.problems.len(), 1);
            assert!(c.lookup("2.37.2").is_some());
        }
        assert!(Catalog::with_overrides(Some("  ")).problems.is_empty());
    }
}
