//! Configuration read from the environment, with the variable names of the
//! real images. Emulator-only knobs carry the `WA_EMULATOR_` prefix.

use std::env;
use std::path::PathBuf;

use jiff::{SignedDuration, Timestamp};
use rand::Rng;

use crate::{Error, instant};

/// Which image the process pretends to be; baked into the image as
/// `WA_EMULATOR_IMAGE`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Image {
    Coreapp,
    Web,
}

/// The role a process plays, chosen from the image and env like the real images.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Role {
    Coreapp,
    Master,
    Upgrade,
    Webapp,
    Gateway,
}

/// `WA_DB_ENGINE`: the client knows `MYSQL` and `PGSQL` only.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Engine {
    Mysql,
    Postgresql,
}

/// Where coreapps and masters bind their four ports.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ListenAddress {
    /// `WA_TCP_LISTEN_ADDRESS=any`: every address of the machine (0.0.0.0).
    Any,
    /// Anything else, or unset: `COREAPP_HOSTNAME` only (an emulator choice).
    Hostname,
}

#[derive(Clone, Debug)]
pub struct DbConfig {
    pub engine: Engine,
    pub hostname: String,
    pub port: u16,
    pub username: String,
    pub password: String,
    pub ssl_ca: Option<PathBuf>,
    /// `WA_DB_CONNECTION_IDLE_TIMEOUT`, milliseconds.
    pub idle_timeout_ms: Option<u64>,
    /// Name of the emulator's database: `<WA_DB_NAME_PREFIX>_waent`, or
    /// `waent` without a prefix (the real client spreads its state over
    /// several databases; one is enough here).
    pub name: String,
    /// Emulator-only: pause between finding no database and creating it, to
    /// make the client's `CREATE DATABASE` race reproducible.
    pub create_delay_ms: u64,
}

#[derive(Clone, Debug)]
pub struct Config {
    pub version: String,
    pub multiconnect: bool,
    pub coreapp_hostname: String,
    pub external_ports: [u16; 4],
    pub db: DbConfig,
    pub gateway: String,
    pub web_listen: String,
    pub tcp_listen: ListenAddress,
    pub web_servername: Option<String>,
    pub jwt_key: Option<String>,
    pub api_key: Option<String>,
    pub release_catalog: Option<PathBuf>,
    pub now_override: Option<Timestamp>,
    pub hostname: String,
    pub container_id: String,
    pub registered_number: Option<String>,
    /// When the pre-registered number counts as registered (epoch ms).
    pub registered_at_ms: Option<i64>,
    pub initial_heartbeat_interval: Option<u64>,
    pub initial_unhealthy_interval: Option<u64>,
    pub upgrade_seconds: u64,
}

fn var(name: &str) -> Option<String> {
    env::var(name).ok().filter(|v| !v.trim().is_empty())
}

fn flag(name: &str) -> bool {
    matches!(var(name).as_deref().map(str::trim), Some("1" | "true" | "TRUE" | "yes"))
}

fn parse_u64(name: &str) -> Result<Option<u64>, Error> {
    var(name)
        .map(|v| v.trim().parse::<u64>().map_err(|_| Error::Config(format!("{name}={v} is not a number"))))
        .transpose()
}

pub fn image_from_env() -> Result<Image, Error> {
    match var("WA_EMULATOR_IMAGE").as_deref().map(str::trim) {
        None | Some("coreapp") => Ok(Image::Coreapp),
        Some("web") | Some("webapp") => Ok(Image::Web),
        Some(other) => Err(Error::Config(format!("WA_EMULATOR_IMAGE={other}: expected coreapp or web"))),
    }
}

/// The role as the real images pick it: the web image is always the webapp;
/// the coreapp image upgrades the schema with `WA_DB_UPGRADE=1`, is a master
/// with `WA_MASTER_NODE=1`, else a coreapp.
pub fn role_from_env() -> Result<Role, Error> {
    Ok(match image_from_env()? {
        Image::Web => Role::Webapp,
        Image::Coreapp if flag("WA_DB_UPGRADE") => Role::Upgrade,
        Image::Coreapp if flag("WA_MASTER_NODE") => Role::Master,
        Image::Coreapp => Role::Coreapp,
    })
}

pub fn parse_ports(value: &str) -> Result<[u16; 4], Error> {
    let ports: Vec<u16> = value
        .split(',')
        .map(|p| p.trim().parse::<u16>())
        .collect::<Result<_, _>>()
        .map_err(|_| Error::Config(format!("COREAPP_EXTERNAL_PORTS={value}: expected four ports")))?;
    ports.try_into().map_err(|_| Error::Config(format!("COREAPP_EXTERNAL_PORTS={value}: expected four ports")))
}

pub fn machine_hostname() -> String {
    hostname::get().ok().and_then(|h| h.into_string().ok()).unwrap_or_else(|| "localhost".to_string())
}

fn random_container_id() -> String {
    let mut rng = rand::rng();
    (0..12).map(|_| format!("{:x}", rng.random_range(0..16u8))).collect()
}

/// `MYSQL` or `PGSQL`, exactly as the client spells them; anything else is a
/// configuration the client refuses. Unset means MySQL (an emulator choice).
pub fn parse_engine(value: Option<&str>) -> Result<Engine, Error> {
    match value.map(str::trim) {
        None | Some("MYSQL") => Ok(Engine::Mysql),
        Some("PGSQL") => Ok(Engine::Postgresql),
        Some(other) => Err(Error::Config(format!("WA_DB_ENGINE={other} is not supported: use MYSQL or PGSQL"))),
    }
}

/// The database the emulator keeps its state in. `WA_DB_NAME_PREFIX` prefixes
/// it like the client prefixes each of its databases; `WA_EMULATOR_DB_NAME`
/// (emulator-only, older tests) names it outright and wins.
pub fn database_name(prefix: Option<&str>, explicit: Option<&str>) -> Result<String, Error> {
    let (what, name) = match (explicit, prefix) {
        (Some(n), _) => ("WA_EMULATOR_DB_NAME", n.trim().to_string()),
        (None, Some(p)) => ("WA_DB_NAME_PREFIX", format!("{}_waent", p.trim())),
        (None, None) => ("", "waent".to_string()),
    };
    // Lower case: PostgreSQL folds unquoted identifiers, MySQL may not.
    let name = name.to_ascii_lowercase();
    if !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') || name.len() > 60 {
        return Err(Error::Config(format!("{what}: database name {name} must be at most 60 letters, digits and _")));
    }
    Ok(name)
}

/// An RFC 3339 instant, or an age such as `8d`, `36h`, `90m` before `now`.
pub fn parse_instant_or_age(name: &str, v: &str, now: Timestamp) -> Result<Timestamp, Error> {
    let v = v.trim();
    if let Ok(t) = instant::parse_rfc3339(v) {
        return Ok(t);
    }
    let bad = || Error::Config(format!("{name}={v}: expected an RFC 3339 instant or an age like 8d, 36h, 90m"));
    let (num, unit) = v.split_at(v.len().saturating_sub(1));
    let n: i64 = num.parse().map_err(|_| bad())?;
    let unit_secs = match unit {
        "d" => 86_400,
        "h" => 3_600,
        "m" => 60,
        _ => return Err(bad()),
    };
    // An age beyond the years jiff represents is refused like a malformed one.
    let age = n.checked_mul(unit_secs).map(SignedDuration::from_secs).ok_or_else(bad)?;
    now.checked_sub(age).map_err(|_| bad())
}

/// `WA_DB_CONNECTION_IDLE_TIMEOUT` as the engine takes it: the client
/// documents it for MySQL only.
pub fn idle_timeout(engine: Engine, ms: Option<u64>) -> Option<u64> {
    match engine {
        Engine::Mysql => ms,
        Engine::Postgresql => None,
    }
}

impl Config {
    pub fn from_env() -> Result<Config, Error> {
        let engine = parse_engine(var("WA_DB_ENGINE").as_deref())?;
        let default_port = match engine {
            Engine::Mysql => 3306,
            Engine::Postgresql => 5432,
        };
        let port = match var("WA_DB_PORT") {
            Some(p) => p.trim().parse().map_err(|_| Error::Config(format!("WA_DB_PORT={p} is not a port")))?,
            None => default_port,
        };
        let db_name = database_name(var("WA_DB_NAME_PREFIX").as_deref(), var("WA_EMULATOR_DB_NAME").as_deref())?;
        let hostname = machine_hostname();
        let now_override = var("WA_EMULATOR_NOW")
            .map(|v| instant::parse_rfc3339(v.trim()).map_err(|e| Error::Config(format!("WA_EMULATOR_NOW={v}: {e}"))))
            .transpose()?;
        Ok(Config {
            version: var("WA_EMULATOR_VERSION")
                .unwrap_or_else(|| "2.53.2".to_string())
                .trim_start_matches('v')
                .to_string(),
            multiconnect: flag("WA_APP_MULTICONNECT"),
            coreapp_hostname: var("COREAPP_HOSTNAME").unwrap_or_else(|| hostname.clone()),
            external_ports: parse_ports(
                &var("COREAPP_EXTERNAL_PORTS").unwrap_or_else(|| "6250,6251,6252,6253".into()),
            )?,
            db: DbConfig {
                engine,
                hostname: var("WA_DB_HOSTNAME").unwrap_or_else(|| "127.0.0.1".into()),
                port,
                username: var("WA_DB_USERNAME").unwrap_or_else(|| "root".into()),
                password: env::var("WA_DB_PASSWORD").unwrap_or_default(),
                ssl_ca: var("WA_DB_SSL_CA").map(PathBuf::from),
                idle_timeout_ms: idle_timeout(engine, parse_u64("WA_DB_CONNECTION_IDLE_TIMEOUT")?),
                name: db_name,
                create_delay_ms: parse_u64("WA_EMULATOR_CREATE_DB_DELAY_MS")?.unwrap_or(0),
            },
            gateway: var("WA_EMULATOR_GATEWAY").unwrap_or_else(|| "127.0.0.1:5222".into()),
            web_listen: var("WA_EMULATOR_WEB_LISTEN").unwrap_or_else(|| "0.0.0.0:443".into()),
            tcp_listen: match var("WA_TCP_LISTEN_ADDRESS").as_deref().map(str::trim) {
                Some(v) if v.eq_ignore_ascii_case("any") => ListenAddress::Any,
                _ => ListenAddress::Hostname,
            },
            web_servername: var("WA_WEB_SERVERNAME"),
            jwt_key: var("WA_WEB_JWT_CRYPTO_KEY"),
            api_key: env::var("WA_API_KEY").ok().filter(|k| !k.is_empty()),
            release_catalog: var("WA_EMULATOR_RELEASE_CATALOG").map(PathBuf::from),
            now_override,
            container_id: var("WA_EMULATOR_CONTAINER_ID").unwrap_or_else(random_container_id),
            hostname,
            registered_number: var("WA_EMULATOR_REGISTERED_NUMBER")
                .map(|n| n.chars().filter(char::is_ascii_digit).collect::<String>())
                .filter(|n| !n.is_empty()),
            registered_at_ms: var("WA_EMULATOR_REGISTERED_AT")
                .map(|v| parse_instant_or_age("WA_EMULATOR_REGISTERED_AT", &v, Timestamp::now()))
                .transpose()?
                .map(|t| t.as_millisecond()),
            initial_heartbeat_interval: parse_u64("WA_EMULATOR_HEARTBEAT_INTERVAL")?,
            initial_unhealthy_interval: parse_u64("WA_EMULATOR_UNHEALTHY_INTERVAL")?,
            upgrade_seconds: parse_u64("WA_EMULATOR_UPGRADE_SECONDS")?.unwrap_or(0),
        })
    }

    /// `<hostname>:<container_id>`, the key of the node in `/v1/health`.
    pub fn node_id(&self) -> String {
        format!("{}:{}", self.hostname, self.container_id)
    }

    pub fn control_port(&self) -> u16 {
        self.external_ports[2]
    }

    /// The clock for build expiry; the only clock `WA_EMULATOR_NOW` moves
    /// (heartbeats and leases always use the real clock).
    pub fn release_clock(&self) -> Timestamp {
        self.now_override.unwrap_or_else(Timestamp::now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_parse() {
        assert_eq!(parse_ports("6250,6251,6252,6253").unwrap(), [6250, 6251, 6252, 6253]);
        assert_eq!(parse_ports(" 1, 2,3 ,4").unwrap(), [1, 2, 3, 4]);
        assert!(parse_ports("1,2,3").is_err());
        assert!(parse_ports("a,b,c,d").is_err());
    }

    #[test]
    fn the_idle_timeout_is_for_mysql_only() {
        assert_eq!(idle_timeout(Engine::Mysql, Some(180_000)), Some(180_000));
        assert_eq!(idle_timeout(Engine::Postgresql, Some(180_000)), None);
        assert_eq!(idle_timeout(Engine::Mysql, None), None);
    }

    #[test]
    fn engines_are_the_clients_names() {
        assert_eq!(parse_engine(None).unwrap(), Engine::Mysql);
        assert_eq!(parse_engine(Some("MYSQL")).unwrap(), Engine::Mysql);
        assert_eq!(parse_engine(Some("PGSQL")).unwrap(), Engine::Postgresql);
        assert!(parse_engine(Some("POSTGRESQL")).is_err());
        assert!(parse_engine(Some("pgsql")).is_err());
    }

    #[test]
    fn database_names() {
        assert_eq!(database_name(None, None).unwrap(), "waent");
        assert_eq!(database_name(Some("Num1"), None).unwrap(), "num1_waent");
        assert_eq!(database_name(Some("num1"), Some("other")).unwrap(), "other");
        assert!(database_name(Some("a-b"), None).is_err());
    }

    #[test]
    fn ages_and_instants() {
        let now: Timestamp = "2024-01-10T00:00:00Z".parse().unwrap();
        let at = |v: &str| parse_instant_or_age("X", v, now).unwrap().to_string();
        assert_eq!(at("8d"), "2024-01-02T00:00:00Z");
        assert_eq!(at("36h"), "2024-01-08T12:00:00Z");
        assert_eq!(at("90m"), "2024-01-09T22:30:00Z");
        assert_eq!(at("-1d"), "2024-01-11T00:00:00Z");
        assert_eq!(at("2024-01-01T00:00:00Z"), "2024-01-01T00:00:00Z");
        assert_eq!(at("2024-01-01T02:00:00+02:00"), "2024-01-01T00:00:00Z");
        assert!(parse_instant_or_age("X", "soon", now).is_err());
        assert!(parse_instant_or_age("X", "9999999d", now).is_err());
    }

    #[test]
    fn container_ids_are_twelve_hex_chars() {
        let id = random_container_id();
        assert_eq!(id.len(), 12);
        assert!(id.chars().all(|c| c.is_ascii_hexdigit()));
    }
}
