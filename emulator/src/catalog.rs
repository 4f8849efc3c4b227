//! Release catalog: release and expiry dates per client version.
//!
//! Every build expires 6 months after its release; Meta's own example
//! (v2.37.2 released 2022-03-26, expiring 2022-09-22) shows that "6 months"
//! means 180 days, so that is the rule unless an entry gives `expiresAt`.

use jiff::Timestamp;
use jiff::civil::{Date, Time};
use serde::Deserialize;

use crate::{Error, instant};

pub const LIFETIME_DAYS: i64 = 180;

/// Built-in catalog. Dates marked approximate are not in the public changelog
/// excerpts the project has; override them with `WA_EMULATOR_RELEASE_CATALOG`.
pub const BUILTIN: &str = include_str!("releases.yaml");

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Release {
    pub version: String,
    pub released_at: String,
    #[serde(default)]
    pub expires_at: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum CatalogFile {
    List(Vec<Release>),
    Wrapped { releases: Vec<Release> },
}

#[derive(Debug, Clone)]
pub struct Catalog {
    releases: Vec<Release>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lifetime {
    pub released_at: Timestamp,
    pub expires_at: Timestamp,
}

fn parse_instant(s: &str) -> Result<Timestamp, Error> {
    let s = s.trim();
    if let Ok(t) = instant::parse_rfc3339(s) {
        return Ok(t);
    }
    // strptime, not `Date::from_str`: one-digit months and days (`2024-1-5`) are dates too.
    Date::strptime("%Y-%m-%d", s)
        .map(|d| instant::from_utc(d.to_datetime(Time::midnight())))
        .map_err(|_| Error::Config(format!("release catalog: {s:?} is neither a date nor RFC 3339")))
}

fn normalise(version: &str) -> &str {
    version.trim().trim_start_matches('v')
}

impl Catalog {
    pub fn parse(text: &str) -> Result<Catalog, Error> {
        let file: CatalogFile =
            serde_saphyr::from_str(text).map_err(|e| Error::Config(format!("release catalog: {e}")))?;
        let releases = match file {
            CatalogFile::List(r) | CatalogFile::Wrapped { releases: r } => r,
        };
        let catalog = Catalog { releases };
        // Validate every date up front so a typo fails at start, not at expiry.
        for r in &catalog.releases {
            catalog.lifetime_of(r)?;
        }
        Ok(catalog)
    }

    pub fn load(path: Option<&std::path::Path>) -> Result<Catalog, Error> {
        match path {
            None => Catalog::parse(BUILTIN),
            Some(p) => {
                let text = std::fs::read_to_string(p)
                    .map_err(|e| Error::Config(format!("release catalog {}: {e}", p.display())))?;
                Catalog::parse(&text)
            }
        }
    }

    fn lifetime_of(&self, r: &Release) -> Result<Lifetime, Error> {
        let released_at = parse_instant(&r.released_at)?;
        let expires_at = match &r.expires_at {
            Some(e) => parse_instant(e)?,
            None => instant::days_after(released_at, LIFETIME_DAYS),
        };
        Ok(Lifetime { released_at, expires_at })
    }

    /// Looks a version up: an exact entry wins, else the entry with the
    /// longest dotted prefix (`2.43` covers `2.43.0`, `2.43.1`, ...).
    pub fn lookup(&self, version: &str) -> Option<Lifetime> {
        let v = normalise(version);
        let exact = self.releases.iter().find(|r| normalise(&r.version) == v);
        let best = exact.or_else(|| {
            self.releases
                .iter()
                .filter(|r| {
                    let p = normalise(&r.version);
                    v.starts_with(p) && v[p.len()..].starts_with('.')
                })
                .max_by_key(|r| normalise(&r.version).len())
        })?;
        self.lifetime_of(best).ok()
    }
}

/// Whether a build is past its expiry at `now`.
pub fn is_expired(lifetime: &Lifetime, now: Timestamp) -> bool {
    now >= lifetime.expires_at
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> Timestamp {
        parse_instant(s).unwrap()
    }

    #[test]
    fn builtin_catalog_has_meta_example() {
        let c = Catalog::parse(BUILTIN).unwrap();
        let l = c.lookup("2.37.2").unwrap();
        assert_eq!(l.released_at, at("2022-03-26"));
        assert_eq!(l.expires_at, at("2022-09-22"));
        assert_eq!(c.lookup("v2.39.4").unwrap().released_at, at("2022-05-10"));
        assert_eq!(c.lookup("2.43.0").unwrap().released_at, at("2022-10-11"));
        assert!(c.lookup("1.0.0").is_none());
    }

    #[test]
    fn expiry_is_180_days_unless_explicit() {
        let c = Catalog::parse(
            r#"
- version: "2.99.1"
  releasedAt: "2024-01-01"
- version: "2.99.2"
  releasedAt: "2024-01-01T12:00:00Z"
  expiresAt: "2024-02-01"
"#,
        )
        .unwrap();
        let a = c.lookup("2.99.1").unwrap();
        assert_eq!(a.expires_at, at("2024-06-29"));
        assert!(!is_expired(&a, at("2024-06-28T23:59:59Z")));
        assert!(is_expired(&a, at("2024-06-29T00:00:00Z")));
        assert_eq!(c.lookup("2.99.2").unwrap().expires_at, at("2024-02-01"));
        assert_eq!(c.lookup("2.99.2").unwrap().released_at, at("2024-01-01T12:00:00+00:00"));
        assert_eq!(at("2024-1-5"), at("2024-01-05T00:00:00Z"));
        assert_eq!(at("9999-12-31"), Timestamp::MAX, "a date meant as never");
        let far = Catalog::parse(r#"[{"version":"2.1","releasedAt":"9999-12-01"}]"#).unwrap();
        assert_eq!(far.lookup("2.1").unwrap().expires_at, Timestamp::MAX);
    }

    #[test]
    fn json_and_wrapped_forms_parse() {
        let json = r#"[{"version":"2.50.1","releasedAt":"2023-08-01"}]"#;
        assert!(Catalog::parse(json).unwrap().lookup("2.50.1").is_some());
        let wrapped = "releases:\n  - version: '2.50'\n    releasedAt: '2023-08-01'\n";
        let c = Catalog::parse(wrapped).unwrap();
        assert!(c.lookup("2.50.3").is_some());
        assert!(c.lookup("2.500.1").is_none());
    }

    #[test]
    fn bad_dates_are_rejected() {
        assert!(Catalog::parse(r#"[{"version":"2.1","releasedAt":"yesterday"}]"#).is_err());
        assert!(Catalog::parse(r#"[{"version":"2.1","releasedAt":"2024-02-30"}]"#).is_err());
    }
}
