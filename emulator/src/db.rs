//! Database access, shared by every role. One code path serves MySQL/MariaDB
//! and PostgreSQL through sqlx's `Any` driver; all integers are BIGINT and all
//! instants are epoch milliseconds so both engines decode alike.

use std::borrow::Cow;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use sqlx::any::{AnyConnectOptions, AnyPoolOptions, AnyRow};
use sqlx::{AnyConnection, AnyPool, ConnectOptions, Connection, Row};

use crate::Error;
use crate::config::{DbConfig, Engine};

pub fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

#[derive(Clone)]
pub struct Db {
    pub pool: AnyPool,
    pub engine: Engine,
}

fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Connection URL; `database` None means the server's maintenance database.
pub fn url(cfg: &DbConfig, database: Option<&str>) -> String {
    let (scheme, default_db) = match cfg.engine {
        Engine::Mysql => ("mysql", ""),
        Engine::Postgresql => ("postgres", "postgres"),
    };
    let mut u = format!(
        "{scheme}://{}:{}@{}:{}/{}",
        encode(&cfg.username),
        encode(&cfg.password),
        cfg.hostname,
        cfg.port,
        database.unwrap_or(default_db)
    );
    if let Some(ca) = &cfg.ssl_ca {
        let ca = encode(&ca.to_string_lossy());
        match cfg.engine {
            Engine::Mysql => u.push_str(&format!("?ssl-mode=VERIFY_CA&ssl-ca={ca}")),
            Engine::Postgresql => u.push_str(&format!("?sslmode=verify-ca&sslrootcert={ca}")),
        }
    }
    u
}

/// Rewrites `?` placeholders to `$n` for PostgreSQL.
pub fn placeholders(engine: Engine, sql: &str) -> Cow<'_, str> {
    if engine == Engine::Mysql || !sql.contains('?') {
        return Cow::Borrowed(sql);
    }
    let mut out = String::with_capacity(sql.len() + 8);
    let mut n = 0;
    for c in sql.chars() {
        if c == '?' {
            n += 1;
            out.push('$');
            out.push_str(&n.to_string());
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

async fn connect_one(cfg: &DbConfig, database: Option<&str>) -> Result<AnyConnection, Error> {
    let opts: AnyConnectOptions = url(cfg, database).parse().map_err(Error::db("parse database URL"))?;
    let opts = opts.disable_statement_logging();
    AnyConnection::connect_with(&opts).await.map_err(Error::db("connect to the database server"))
}

/// A connection to the server's maintenance database, to look up and
/// create the emulator's database. No lock is taken: the client does not take
/// one either, so processes starting at once on an empty server can race on
/// `CREATE DATABASE` as the client's do.
pub struct ServerConn {
    conn: AnyConnection,
}

impl ServerConn {
    pub async fn open(cfg: &DbConfig) -> Result<ServerConn, Error> {
        Ok(ServerConn { conn: connect_one(cfg, None).await? })
    }

    pub async fn close(self) {
        let _ = self.conn.close().await;
    }

    /// The server's version string (MySQL `VERSION()`, PostgreSQL
    /// `server_version`).
    pub async fn server_version(&mut self, engine: Engine) -> Result<String, Error> {
        let sql = match engine {
            Engine::Mysql => "SELECT VERSION()",
            Engine::Postgresql => "SELECT current_setting('server_version')",
        };
        sqlx::query(sql)
            .fetch_one(&mut self.conn)
            .await
            .map_err(Error::db("read the server version"))?
            .try_get(0)
            .map_err(Error::db("read the server version"))
    }

    pub async fn database_exists(&mut self, engine: Engine, name: &str) -> Result<bool, Error> {
        let sql = match engine {
            Engine::Mysql => "SELECT COUNT(*) FROM information_schema.schemata WHERE schema_name = ?",
            Engine::Postgresql => "SELECT COUNT(*) FROM pg_database WHERE datname = $1",
        };
        let n: i64 = sqlx::query(sql)
            .bind(name)
            .fetch_one(&mut self.conn)
            .await
            .map_err(Error::db("look up the database"))?
            .try_get(0)
            .map_err(Error::db("look up the database"))?;
        Ok(n > 0)
    }

    pub async fn create_database(&mut self, name: &str) -> Result<(), Error> {
        // `name` is validated to [A-Za-z0-9_] by the config.
        sqlx::query(&format!("CREATE DATABASE {name}")).execute(&mut self.conn).await.map_err(|e| {
            Error::Fatal(format!("Unable to initialize config store: CREATE DATABASE {name} failed: {e}"))
        })?;
        Ok(())
    }
}

impl Db {
    pub async fn connect(cfg: &DbConfig) -> Result<Db, Error> {
        let opts: AnyConnectOptions = url(cfg, Some(&cfg.name)).parse().map_err(Error::db("parse database URL"))?;
        let opts = opts.disable_statement_logging();
        let pool = AnyPoolOptions::new()
            .max_connections(4)
            .acquire_timeout(Duration::from_secs(10))
            .idle_timeout(cfg.idle_timeout_ms.map(Duration::from_millis))
            .connect_with(opts)
            .await
            .map_err(Error::db("connect to the database"))?;
        Ok(Db { pool, engine: cfg.engine })
    }

    pub fn sql<'a>(&self, sql: &'a str) -> Cow<'a, str> {
        placeholders(self.engine, sql)
    }

    pub async fn exec(&self, sql: &str, args: &[Arg<'_>]) -> Result<u64, Error> {
        let sql = self.sql(sql);
        let mut q = sqlx::query(&sql);
        for a in args {
            q = match a {
                Arg::I(v) => q.bind(*v),
                Arg::S(v) => q.bind(v.to_string()),
            };
        }
        Ok(q.execute(&self.pool).await.map_err(Error::db("database write"))?.rows_affected())
    }

    pub async fn rows(&self, sql: &str, args: &[Arg<'_>]) -> Result<Vec<AnyRow>, Error> {
        let sql = self.sql(sql);
        let mut q = sqlx::query(&sql);
        for a in args {
            q = match a {
                Arg::I(v) => q.bind(*v),
                Arg::S(v) => q.bind(v.to_string()),
            };
        }
        q.fetch_all(&self.pool).await.map_err(Error::db("database read"))
    }

    pub async fn get_setting(&self, name: &str) -> Result<Option<String>, Error> {
        let rows = self.rows("SELECT value FROM wa_settings WHERE name = ?", &[Arg::S(name)]).await?;
        rows.first().map(|r| r.try_get::<String, _>(0).map_err(Error::db("read setting"))).transpose()
    }

    pub async fn set_setting(&self, name: &str, value: &str) -> Result<(), Error> {
        let updated =
            self.exec("UPDATE wa_settings SET value = ? WHERE name = ?", &[Arg::S(value), Arg::S(name)]).await?;
        if updated == 0 {
            // MySQL reports 0 rows for an UPDATE that changes nothing, so an
            // insert may hit an existing row: that is the same value, fine.
            let _ =
                self.exec("INSERT INTO wa_settings (name, value) VALUES (?, ?)", &[Arg::S(name), Arg::S(value)]).await;
        }
        Ok(())
    }

    /// A document in `wa_blobs` (certificates, application settings).
    pub async fn get_blob(&self, name: &str) -> Result<Option<String>, Error> {
        let rows = self.rows("SELECT value FROM wa_blobs WHERE name = ?", &[Arg::S(name)]).await?;
        rows.first().map(|r| r.try_get::<String, _>(0).map_err(Error::db("read blob"))).transpose()
    }

    /// Replaces a document in `wa_blobs`, in one transaction so that no
    /// reader sees it missing.
    pub async fn put_blob(&self, name: &str, value: &str) -> Result<(), Error> {
        let mut tx = self.pool.begin().await.map_err(Error::db("begin"))?;
        let delete = self.sql("DELETE FROM wa_blobs WHERE name = ?").into_owned();
        sqlx::query(&delete).bind(name.to_string()).execute(&mut *tx).await.map_err(Error::db("write blob"))?;
        let insert = self.sql("INSERT INTO wa_blobs (name, value) VALUES (?, ?)").into_owned();
        sqlx::query(&insert)
            .bind(name.to_string())
            .bind(value.to_string())
            .execute(&mut *tx)
            .await
            .map_err(Error::db("write blob"))?;
        tx.commit().await.map_err(Error::db("commit"))
    }

    pub async fn delete_blob(&self, name: &str) -> Result<bool, Error> {
        Ok(self.exec("DELETE FROM wa_blobs WHERE name = ?", &[Arg::S(name)]).await? > 0)
    }

    pub async fn settings(&self) -> Result<Settings, Error> {
        let rows = self.rows("SELECT name, value FROM wa_settings", &[]).await?;
        let mut s = Settings::default();
        for r in rows {
            let name: String = r.try_get(0).map_err(Error::db("read settings"))?;
            let value: String = r.try_get(1).map_err(Error::db("read settings"))?;
            let num = value.parse::<u64>().ok();
            match name.as_str() {
                "shards" => s.shards = num.unwrap_or(1),
                "heartbeat_interval" => s.heartbeat_interval = num.unwrap_or(5).max(1),
                "unhealthy_interval" => s.unhealthy_interval = num.unwrap_or(30).max(1),
                "deployment_id" => s.deployment_id = value,
                "registered_number" => s.registered_number = Some(value).filter(|v| !v.is_empty()),
                "registered_at_ms" => s.registered_at_ms = value.parse().ok(),
                "banned" => s.banned = Some(value).filter(|v| !v.is_empty()),
                "registration_lost" => s.registration_lost = Some(value).filter(|v| !v.is_empty()),
                _ => {}
            }
        }
        Ok(s)
    }

    pub async fn schema(&self) -> Result<SchemaRow, Error> {
        let rows = self.rows("SELECT version, state, app_version FROM wa_schema WHERE id = 1", &[]).await?;
        let r = rows.first().ok_or_else(|| Error::Fatal("the schema table is empty".into()))?;
        Ok(SchemaRow {
            version: r.try_get(0).map_err(Error::db("read schema"))?,
            state: r.try_get(1).map_err(Error::db("read schema"))?,
            app_version: r.try_get(2).map_err(Error::db("read schema"))?,
        })
    }
}

pub enum Arg<'a> {
    I(i64),
    S(&'a str),
}

#[derive(Debug, Clone)]
pub struct Settings {
    pub shards: u64,
    pub heartbeat_interval: u64,
    pub unhealthy_interval: u64,
    pub deployment_id: String,
    pub registered_number: Option<String>,
    /// When the number was registered (epoch ms): set-shards more than 7 days
    /// later disconnects it.
    pub registered_at_ms: Option<i64>,
    /// Why WhatsApp banned the number, while it is banned.
    pub banned: Option<String>,
    /// Why the registration was dropped (logged off), until the next one.
    pub registration_lost: Option<String>,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            shards: 1,
            heartbeat_interval: 5,
            unhealthy_interval: 30,
            deployment_id: String::new(),
            registered_number: None,
            registered_at_ms: None,
            banned: None,
            registration_lost: None,
        }
    }
}

#[derive(Debug, Clone)]
pub struct SchemaRow {
    pub version: i64,
    pub state: String,
    pub app_version: String,
}

/// The client supports MySQL 5.7+ (MariaDB 10.2+) and PostgreSQL 11+; on
/// older servers it fails with "Unable to initialize config store".
pub fn server_supported(engine: Engine, version: &str) -> bool {
    let nums: Vec<u32> = version
        .split(|c: char| !c.is_ascii_digit())
        .filter(|p| !p.is_empty())
        .take(2)
        .filter_map(|p| p.parse().ok())
        .collect();
    let (major, minor) = (nums.first().copied().unwrap_or(0), nums.get(1).copied().unwrap_or(0));
    match engine {
        Engine::Postgresql => major >= 11,
        Engine::Mysql if version.contains("MariaDB") => (major, minor) >= (10, 2),
        Engine::Mysql => (major, minor) >= (5, 7),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_versions() {
        assert!(server_supported(Engine::Mysql, "8.0.36"));
        assert!(server_supported(Engine::Mysql, "5.7.44-log"));
        assert!(!server_supported(Engine::Mysql, "5.6.51"));
        assert!(server_supported(Engine::Mysql, "10.11.19-MariaDB-0+deb12u1"));
        assert!(!server_supported(Engine::Mysql, "10.1.48-MariaDB"));
        assert!(server_supported(Engine::Postgresql, "15.18 (Debian 15.18-0+deb12u1)"));
        assert!(server_supported(Engine::Postgresql, "11.22"));
        assert!(!server_supported(Engine::Postgresql, "10.23"));
    }

    #[test]
    fn placeholders_rewritten_for_postgres_only() {
        assert_eq!(placeholders(Engine::Mysql, "a = ? AND b = ?"), "a = ? AND b = ?");
        assert_eq!(placeholders(Engine::Postgresql, "a = ? AND b = ?"), "a = $1 AND b = $2");
    }

    #[test]
    fn url_escapes_credentials() {
        let cfg = DbConfig {
            engine: Engine::Postgresql,
            hostname: "db".into(),
            port: 5432,
            username: "u@x".into(),
            password: "p/w:d".into(),
            ssl_ca: Some("/ca.pem".into()),
            idle_timeout_ms: None,
            name: "waent".into(),
            create_delay_ms: 0,
        };
        assert_eq!(
            url(&cfg, Some("waent")),
            "postgres://u%40x:p%2Fw%3Ad@db:5432/waent?sslmode=verify-ca&sslrootcert=%2Fca.pem"
        );
    }
}
