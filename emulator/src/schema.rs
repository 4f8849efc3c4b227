//! Schema versions, database creation, the start-up gate and upgrades.
//!
//! Rule: the schema number of client version `major.minor.patch` is
//! `major * 1000 + minor`; patch releases share their minor's schema.

use std::time::Duration;

use rand::Rng;

use crate::Error;
use crate::config::{Config, Engine};
use crate::db::{Arg, Db, SchemaRow, ServerConn, now_ms};

pub const STATE_READY: &str = "ready";
pub const STATE_UPGRADE: &str = "upgrade";

pub fn schema_number(version: &str) -> Result<i64, Error> {
    let mut parts = version.trim_start_matches('v').split('.');
    let mut next = || parts.next().and_then(|p| p.parse::<i64>().ok());
    match (next(), next()) {
        (Some(major), Some(minor)) if minor < 1000 => Ok(major * 1000 + minor),
        _ => Err(Error::Config(format!("version {version:?} is not major.minor[.patch]"))),
    }
}

/// What a node of schema `mine` does with the database at `db` in `state`.
#[derive(Debug, PartialEq, Eq)]
pub enum Gate {
    Proceed,
    /// Schema upgrade needed or running: log the UPGRADE line and exit.
    Wait,
    /// The database belongs to a newer build: log the UPGRADE line and exit.
    Refuse,
}

pub fn gate_decision(mine: i64, db: i64, state: &str) -> Gate {
    if db > mine {
        Gate::Refuse
    } else if db < mine || state == STATE_UPGRADE {
        Gate::Wait
    } else {
        Gate::Proceed
    }
}

fn tables(engine: Engine) -> Vec<&'static str> {
    let _ = engine; // the DDL below is valid on both engines
    vec![
        "CREATE TABLE wa_schema (id BIGINT PRIMARY KEY, version BIGINT NOT NULL, state VARCHAR(32) NOT NULL, app_version VARCHAR(64) NOT NULL)",
        "CREATE TABLE wa_settings (name VARCHAR(64) PRIMARY KEY, value VARCHAR(255) NOT NULL)",
        "CREATE TABLE wa_nodes (id VARCHAR(255) PRIMARY KEY, role VARCHAR(32) NOT NULL, version VARCHAR(64) NOT NULL, address VARCHAR(255) NOT NULL, control_port BIGINT NOT NULL, ready BIGINT NOT NULL, started_ms BIGINT NOT NULL, heartbeat_ms BIGINT NOT NULL)",
        "CREATE TABLE wa_master_lease (id BIGINT PRIMARY KEY, holder VARCHAR(255) NOT NULL, expires_ms BIGINT NOT NULL)",
        "CREATE TABLE wa_shard_map (shard BIGINT PRIMARY KEY, node_id VARCHAR(255) NOT NULL)",
        "CREATE TABLE wa_users (username VARCHAR(64) PRIMARY KEY, salt VARCHAR(64) NOT NULL, password_hash VARCHAR(128) NOT NULL, must_change BIGINT NOT NULL)",
        // VARCHAR, not TEXT: through sqlx's Any driver MySQL TEXT decodes as a blob.
        "CREATE TABLE wa_blobs (name VARCHAR(64) PRIMARY KEY, value VARCHAR(16000) NOT NULL)",
    ]
}

fn random_hex(n: usize) -> String {
    let mut rng = rand::rng();
    (0..n).map(|_| format!("{:x}", rng.random_range(0..16u8))).collect()
}

/// Connects to the emulator's database, creating the database and its schema
/// at this build's version when the server has none. Like the client, no lock
/// guards this: processes starting at once on an empty server race, and the
/// losers fail (run the `WA_DB_UPGRADE=1` job first to avoid it).
pub async fn ensure(cfg: &Config) -> Result<Db, Error> {
    let mine = schema_number(&cfg.version)?;
    let mut server = ServerConn::open(&cfg.db).await?;
    let version = server.server_version(cfg.db.engine).await?;
    if !crate::db::server_supported(cfg.db.engine, &version) {
        server.close().await;
        return Err(Error::Fatal(format!(
            "Unable to initialize config store: database server version {version} is not supported (MySQL 5.7+, MariaDB 10.2+, PostgreSQL 11+)"
        )));
    }
    if !server.database_exists(cfg.db.engine, &cfg.db.name).await? {
        if cfg.db.create_delay_ms > 0 {
            // Emulator-only: widens the window between the check and the
            // create so that the race is reproducible in tests.
            tokio::time::sleep(Duration::from_millis(cfg.db.create_delay_ms)).await;
        }
        tracing::info!(database = %cfg.db.name, "creating database");
        let created = server.create_database(&cfg.db.name).await;
        server.close().await;
        created?;
    } else {
        server.close().await;
    }
    let db = Db::connect(&cfg.db).await?;
    let exists = db.rows("SELECT COUNT(*) FROM wa_schema", &[]).await.is_ok();
    if !exists {
        tracing::info!(schema = mine, version = %cfg.version, "initialising the schema");
        for ddl in tables(cfg.db.engine) {
            db.exec(ddl, &[]).await.map_err(|e| Error::Fatal(format!("Unable to initialize config store: {e}")))?;
        }
        db.exec(
            "INSERT INTO wa_schema (id, version, state, app_version) VALUES (1, ?, ?, ?)",
            &[Arg::I(mine), Arg::S(STATE_READY), Arg::S(&cfg.version)],
        )
        .await?;
        let hb = cfg.initial_heartbeat_interval.unwrap_or(5).to_string();
        let uh = cfg.initial_unhealthy_interval.unwrap_or(30).to_string();
        for (k, v) in [
            ("shards", "1".to_string()),
            ("heartbeat_interval", hb),
            ("unhealthy_interval", uh),
            ("deployment_id", random_hex(16)),
        ] {
            db.set_setting(k, &v).await?;
        }
        db.exec("INSERT INTO wa_master_lease (id, holder, expires_ms) VALUES (1, '', 0)", &[]).await?;
        let (salt, hash) = crate::auth::hash_new_password("secret");
        db.exec(
            "INSERT INTO wa_users (username, salt, password_hash, must_change) VALUES ('admin', ?, ?, 1)",
            &[Arg::S(&salt), Arg::S(&hash)],
        )
        .await?;
    }
    if let Some(number) = &cfg.registered_number
        && db.get_setting("registered_number").await?.is_none()
    {
        let at = cfg.registered_at_ms.unwrap_or_else(now_ms);
        tracing::warn!(number = %number, registered_at_ms = at, "pre-registering the number (emulator-only WA_EMULATOR_REGISTERED_NUMBER)");
        db.set_setting("registered_at_ms", &at.to_string()).await?;
        db.set_setting("registered_number", number).await?;
    }
    Ok(db)
}

/// The client's start-up gate: a build whose schema differs from the
/// database's, or that finds an upgrade running, logs the UPGRADE line and
/// exits (a crash loop under an orchestrator) rather than waiting.
pub async fn check_current(db: &Db, cfg: &Config) -> Result<(), Error> {
    let row = db.schema().await?;
    gate_error(cfg, &row).map_or(Ok(()), Err)
}

/// The error a node of this build stops with for `row`, if any.
pub fn gate_error(cfg: &Config, row: &SchemaRow) -> Option<Error> {
    let mine = schema_number(&cfg.version).unwrap_or(0);
    let why = match gate_decision(mine, row.version, &row.state) {
        Gate::Proceed => return None,
        Gate::Wait => format!(
            "database schema {} {}, written by {}; this build {} needs schema {}",
            row.version, row.state, row.app_version, cfg.version, mine
        ),
        Gate::Refuse => format!(
            "database schema {} written by {} is newer than this build {} (schema {}): older builds cannot run on a newer schema; refusing to start",
            row.version, row.app_version, cfg.version, mine
        ),
    };
    Some(Error::Fatal(format!("{UPGRADE_STATE} ({why}), exit!")))
}

pub const UPGRADE_STATE: &str = "Cluster is under ClusterState::Type(UPGRADE) state";

/// The `WA_DB_UPGRADE=1` job: migrates the schema to this build's version.
/// On an empty server it creates the databases, which is how an orchestrator
/// avoids the webapps' `CREATE DATABASE` race: run it before anything else.
pub async fn upgrade(cfg: &Config) -> Result<(), Error> {
    let mine = schema_number(&cfg.version)?;
    let db = ensure(cfg).await?;
    let row = db.schema().await?;
    if row.version > mine {
        return Err(Error::Fatal(format!(
            "database schema {} is newer than this build {} (schema {}); refusing to downgrade",
            row.version, cfg.version, mine
        )));
    }
    if row.version == mine && row.state == STATE_READY {
        tracing::info!(schema = mine, "database schema is already current");
        return Ok(());
    }
    tracing::info!(from = row.version, to = mine, "upgrading the database schema");
    db.exec("UPDATE wa_schema SET state = ? WHERE id = 1", &[Arg::S(STATE_UPGRADE)]).await?;
    if cfg.upgrade_seconds > 0 {
        tokio::time::sleep(Duration::from_secs(cfg.upgrade_seconds)).await;
    }
    db.exec(
        "UPDATE wa_schema SET version = ?, state = ?, app_version = ? WHERE id = 1",
        &[Arg::I(mine), Arg::S(STATE_READY), Arg::S(&cfg.version)],
    )
    .await?;
    tracing::info!(schema = mine, "database schema upgrade complete");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schema_number_is_major_minor() {
        assert_eq!(schema_number("2.53.2").unwrap(), 2053);
        assert_eq!(schema_number("v2.53.9").unwrap(), 2053);
        assert_eq!(schema_number("2.43").unwrap(), 2043);
        assert_eq!(schema_number("3.1.0").unwrap(), 3001);
        assert!(schema_number("latest").is_err());
    }

    #[test]
    fn gate_rules() {
        assert_eq!(gate_decision(2053, 2053, STATE_READY), Gate::Proceed);
        assert_eq!(gate_decision(2055, 2053, STATE_READY), Gate::Wait);
        assert_eq!(gate_decision(2053, 2053, STATE_UPGRADE), Gate::Wait);
        assert_eq!(gate_decision(2051, 2053, STATE_READY), Gate::Refuse);
    }
}
