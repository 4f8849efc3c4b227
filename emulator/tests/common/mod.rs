//! Test harness: real emulator processes against real MariaDB and PostgreSQL.
//!
//! The databases come from the variables `hack/databases.sh env` prints; when
//! they are not set the harness runs `hack/databases.sh up` itself. Every
//! test uses its own database name, gateway and loopback addresses.

#![allow(dead_code)]

use std::collections::HashMap;
use std::future::Future;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use serde_json::Value;

pub const BIN: &str = env!("CARGO_BIN_EXE_whatsapp-emulator");
pub const NUMBER: &str = "+15550001111";
pub const API_KEY: &str = "emulator-test-api-key";
/// The admin password the harness sets at the first login.
pub const ADMIN_PASSWORD: &str = "Str0ng!Pass";
pub const CONFLICT: &str = "Conflict: Detected multiple instances that share the same number";
pub const UPGRADE_LINE: &str = "Cluster is under ClusterState::Type(UPGRADE) state";

/// A catalog for the versions the tests use, independent of the built-in one.
pub const CATALOG: &str = r#"
- version: "2.51.1"
  releasedAt: "2023-10-10"
- version: "2.53.2"
  releasedAt: "2024-01-10"
- version: "2.55.1"
  releasedAt: "2024-04-10"
"#;
/// A moment when every catalog version above is still valid.
pub const NOW: &str = "2024-04-20T00:00:00Z";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Engine {
    Mysql,
    Postgres,
}

#[derive(Clone, Debug)]
pub struct DbServer {
    pub host: String,
    pub port: String,
    pub user: String,
    pub password: String,
    /// CA of the servers' TLS certificates.
    pub ssl_ca: String,
}

fn databases_from(vars: &HashMap<String, String>) -> Option<(DbServer, DbServer)> {
    let get = |k: &str| vars.get(k).cloned();
    Some((
        DbServer {
            host: get("WAO_MYSQL_HOST")?,
            port: get("WAO_MYSQL_PORT")?,
            user: get("WAO_MYSQL_USER")?,
            password: get("WAO_MYSQL_PASSWORD")?,
            ssl_ca: get("WAO_DB_SSL_CA")?,
        },
        DbServer {
            host: get("WAO_POSTGRES_HOST")?,
            port: get("WAO_POSTGRES_PORT")?,
            user: get("WAO_POSTGRES_USER")?,
            password: get("WAO_POSTGRES_PASSWORD")?,
            ssl_ca: get("WAO_DB_SSL_CA")?,
        },
    ))
}

/// The database servers; starts them with `hack/databases.sh up` when the
/// environment does not name them. Never skips.
pub fn servers() -> &'static (DbServer, DbServer) {
    static SERVERS: OnceLock<(DbServer, DbServer)> = OnceLock::new();
    SERVERS.get_or_init(|| {
        let vars: HashMap<String, String> = std::env::vars().collect();
        if let Some(s) = databases_from(&vars) {
            return s;
        }
        assert!(
            !vars.contains_key("WAO_MYSQL_HOST"),
            "WAO_MYSQL_* is set but not every variable of `hack/databases.sh env` is (WAO_DB_SSL_CA?)"
        );
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../hack/databases.sh");
        let up = Command::new("bash").arg(script).arg("up").status().expect("run hack/databases.sh up");
        assert!(up.success(), "hack/databases.sh up failed");
        let out = Command::new("bash").arg(script).arg("env").output().expect("run hack/databases.sh env");
        let vars: HashMap<String, String> = String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| l.strip_prefix("export ")?.split_once('='))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        databases_from(&vars).expect("hack/databases.sh env printed every variable")
    })
}

static COUNTER: AtomicU32 = AtomicU32::new(0);

fn next() -> u32 {
    COUNTER.fetch_add(1, Ordering::SeqCst)
}

/// A loopback address of its own for a node, so nodes use the standard
/// ports 6250-6253 without clashing.
pub fn next_ip() -> String {
    let n = next();
    let pid = std::process::id();
    format!("127.{}.{}.{}", 100 + pid % 100, 1 + n / 250, 2 + n % 250)
}

/// A free port below the ephemeral range (32768 and up on Linux): a port the
/// kernel hands out can be taken by an outgoing connection's ephemeral port
/// before the emulator binds it, and the webapp then fails to start.
pub fn free_port() -> u16 {
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    loop {
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let port = 20_000 + ((std::process::id() * 131 + n) % 12_000) as u16;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

pub fn unique_db(prefix: &str) -> String {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().subsec_nanos();
    format!("emu_{prefix}_{}_{}_{}", std::process::id(), next(), nanos % 100_000)
}

pub struct Proc {
    pub name: String,
    pub child: Child,
    pub log: PathBuf,
}

impl Proc {
    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
    pub fn terminate(&mut self) {
        let _ = Command::new("kill").arg("-TERM").arg(self.child.id().to_string()).status();
        let _ = self.child.wait();
    }
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
    }
    /// Waits for the process to exit, bounded.
    pub async fn wait_exit(&mut self, within: Duration) -> std::process::ExitStatus {
        let deadline = Instant::now() + within;
        loop {
            if let Some(s) = self.exited() {
                return s;
            }
            assert!(Instant::now() < deadline, "{} did not exit within {within:?}\n{}", self.name, self.logs());
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// One emulated deployment: a database, its nodes and webapps, and a gateway
/// (possibly shared with another deployment).
pub struct Cluster {
    pub name: String,
    pub engine: Engine,
    pub server: DbServer,
    /// `WA_DB_NAME_PREFIX` of the deployment.
    pub db: String,
    pub gateway: String,
    pub dir: PathBuf,
    pub env: HashMap<String, String>,
    pub procs: Vec<Proc>,
    pub webapp_url: Option<String>,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if std::thread::panicking() {
            for p in &self.procs {
                eprintln!("===== {} ({}) =====\n{}", p.name, p.log.display(), p.logs());
            }
        }
    }
}

pub fn start_gateway(dir: &std::path::Path) -> (Proc, String) {
    start_gateway_with(dir, &[])
}

/// A gateway with extra environment (`WA_EMULATOR_CODE_RETRY_SECONDS`).
pub fn start_gateway_with(dir: &std::path::Path, env: &[(&str, &str)]) -> (Proc, String) {
    let addr = format!("127.0.0.1:{}", free_port());
    let log = dir.join(format!("gateway-{}.log", next()));
    let child = Command::new(BIN)
        .args(["gateway", "--listen", &addr])
        .envs(env.iter().map(|(k, v)| (k.to_string(), v.to_string())))
        .stdout(Stdio::from(std::fs::File::create(&log).unwrap()))
        .stderr(Stdio::from(std::fs::File::create(&log).unwrap().try_clone().unwrap()))
        .spawn()
        .expect("start the gateway");
    (Proc { name: "gateway".into(), child, log }, addr)
}

pub fn test_dir(test: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("emulator-{test}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

impl Cluster {
    /// A deployment on a fresh database; the caller supplies the gateway.
    pub fn new(name: &str, engine: Engine, gateway: &str, dir: &std::path::Path) -> Cluster {
        let (my, pg) = servers();
        let (server, engine_name) = match engine {
            Engine::Mysql => (my, "MYSQL"),
            Engine::Postgres => (pg, "PGSQL"),
        };
        let db = unique_db(name);
        let catalog = dir.join("catalog.yaml");
        std::fs::write(&catalog, CATALOG).unwrap();
        let env: HashMap<String, String> = [
            ("WA_DB_ENGINE", engine_name.to_string()),
            ("WA_DB_HOSTNAME", server.host.clone()),
            ("WA_DB_PORT", server.port.clone()),
            ("WA_DB_USERNAME", server.user.clone()),
            ("WA_DB_PASSWORD", server.password.clone()),
            ("WA_DB_NAME_PREFIX", db.clone()),
            ("WA_APP_MULTICONNECT", "1".to_string()),
            ("WA_EMULATOR_GATEWAY", gateway.to_string()),
            ("WA_EMULATOR_VERSION", "2.53.2".to_string()),
            ("WA_EMULATOR_RELEASE_CATALOG", catalog.to_string_lossy().to_string()),
            ("WA_EMULATOR_NOW", NOW.to_string()),
            ("WA_EMULATOR_HEARTBEAT_INTERVAL", "1".to_string()),
            ("WA_EMULATOR_UNHEALTHY_INTERVAL", "3".to_string()),
            ("WA_EMULATOR_REGISTERED_NUMBER", NUMBER.to_string()),
            ("WA_API_KEY", API_KEY.to_string()),
            ("WA_WEB_JWT_CRYPTO_KEY", format!("jwt-key-{db}")),
            ("RUST_LOG", "info,sqlx=warn".to_string()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        Cluster {
            name: name.to_string(),
            engine,
            server: server.clone(),
            db,
            gateway: gateway.to_string(),
            dir: dir.to_path_buf(),
            env,
            procs: vec![],
            webapp_url: None,
        }
    }

    pub fn set(&mut self, k: &str, v: &str) -> &mut Self {
        self.env.insert(k.to_string(), v.to_string());
        self
    }

    pub fn unset(&mut self, k: &str) -> &mut Self {
        self.env.remove(k);
        self
    }

    /// Spawns the binary with the cluster env plus `extra`; returns its index.
    pub fn spawn(&mut self, name: &str, extra: &[(&str, &str)]) -> usize {
        let log = self.dir.join(format!("{}-{}-{}.log", self.name, name, next()));
        let file = std::fs::File::create(&log).unwrap();
        let mut cmd = Command::new(BIN);
        cmd.env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .envs(&self.env)
            .envs(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())))
            .stdout(Stdio::from(file.try_clone().unwrap()))
            .stderr(Stdio::from(file));
        let child = cmd.spawn().expect("start the emulator");
        self.procs.push(Proc { name: format!("{}/{}", self.name, name), child, log });
        self.procs.len() - 1
    }

    /// Runs the schema upgrade job of `version` to completion.
    pub async fn upgrade(&mut self, version: &str) -> std::process::ExitStatus {
        let i = self.spawn(&format!("upgrade-{version}"), &[("WA_DB_UPGRADE", "1"), ("WA_EMULATOR_VERSION", version)]);
        self.procs[i].wait_exit(Duration::from_secs(30)).await
    }

    /// A master (`WA_MASTER_NODE=1`); the node id is `<hostname>:<id>`.
    pub fn master(&mut self, id: &str) -> (usize, String) {
        let ip = next_ip();
        (self.spawn(id, &[("WA_MASTER_NODE", "1"), ("COREAPP_HOSTNAME", &ip), ("WA_EMULATOR_CONTAINER_ID", id)]), ip)
    }

    pub fn coreapp(&mut self, id: &str) -> (usize, String) {
        self.coreapp_with(id, &[])
    }

    pub fn coreapp_with(&mut self, id: &str, extra: &[(&str, &str)]) -> (usize, String) {
        let ip = next_ip();
        let mut all = vec![("COREAPP_HOSTNAME", ip.as_str()), ("WA_EMULATOR_CONTAINER_ID", id)];
        all.extend_from_slice(extra);
        (self.spawn(id, &all), ip)
    }

    /// A webapp (`WA_EMULATOR_IMAGE=web`) on a free port; returns its URL.
    pub fn webapp(&mut self, extra: &[(&str, &str)]) -> String {
        let port = free_port();
        let listen = format!("127.0.0.1:{port}");
        let mut all = vec![("WA_EMULATOR_IMAGE", "web"), ("WA_EMULATOR_WEB_LISTEN", listen.as_str())];
        all.extend_from_slice(extra);
        self.spawn(&format!("webapp-{port}"), &all);
        let url = format!("https://{listen}");
        self.webapp_url.get_or_insert(url.clone());
        url
    }

    pub fn url(&self) -> &str {
        self.webapp_url.as_deref().expect("a webapp was started")
    }

    pub fn logs_of(&self, i: usize) -> String {
        self.procs[i].logs()
    }
}

pub fn hostname() -> String {
    let out = Command::new("hostname").output().expect("hostname");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

pub fn node_key(id: &str) -> String {
    format!("{}:{id}", hostname())
}

pub fn client() -> reqwest::Client {
    reqwest::Client::builder().danger_accept_invalid_certs(true).timeout(Duration::from_secs(10)).build().unwrap()
}

/// Whether the client accepts the API key on `url` (monitoring endpoints).
pub fn monitoring(url: &str) -> bool {
    ["/v1/health", "/v1/stats/", "/metrics"].iter().any(|p| url.contains(p))
}

async fn login_once(base: &str, password: &str, new_password: Option<&str>) -> Result<Option<String>, String> {
    let mut req = client().post(format!("{base}/v1/users/login")).basic_auth("admin", Some(password));
    if let Some(p) = new_password {
        req = req.json(&serde_json::json!({"new_password": p}));
    }
    let resp = req.send().await.map_err(|e| e.to_string())?;
    if resp.status().as_u16() != 200 {
        return Ok(None);
    }
    let v: Value = resp.json().await.map_err(|e| e.to_string())?;
    Ok(v["users"][0]["token"].as_str().map(str::to_string))
}

/// An admin Bearer token for the webapp at `base` (the first login sets
/// `ADMIN_PASSWORD`); cached per webapp.
pub async fn admin_token(base: &str) -> Result<String, String> {
    static TOKENS: OnceLock<std::sync::Mutex<HashMap<String, String>>> = OnceLock::new();
    let cache = TOKENS.get_or_init(Default::default);
    if let Some(t) = cache.lock().unwrap().get(base) {
        return Ok(t.clone());
    }
    let token = match login_once(base, ADMIN_PASSWORD, None).await? {
        Some(t) => t,
        None => login_once(base, "secret", Some(ADMIN_PASSWORD)).await?.ok_or("admin login failed")?,
    };
    cache.lock().unwrap().insert(base.to_string(), token.clone());
    Ok(token)
}

fn base_of(url: &str) -> &str {
    let after = url.find("://").map(|i| i + 3).unwrap_or(0);
    url[after..].find('/').map(|i| &url[..after + i]).unwrap_or(url)
}

/// A request as the operator would make it: the API key on the monitoring
/// endpoints, an admin Bearer token everywhere else.
pub async fn api(method: reqwest::Method, url: &str, body: Option<Value>) -> Result<(u16, Value), String> {
    let auth = if monitoring(url) {
        format!("Apikey {API_KEY}")
    } else {
        format!("Bearer {}", admin_token(base_of(url)).await?)
    };
    send(method, url, &auth, body).await
}

/// A request with the API key, whatever the endpoint.
pub async fn with_api_key(method: reqwest::Method, url: &str, body: Option<Value>) -> Result<(u16, Value), String> {
    send(method, url, &format!("Apikey {API_KEY}"), body).await
}

pub async fn send(method: reqwest::Method, url: &str, auth: &str, body: Option<Value>) -> Result<(u16, Value), String> {
    let mut req = client().request(method, url).header("Authorization", auth);
    if let Some(b) = body {
        req = req.json(&b);
    }
    let resp = req.send().await.map_err(|e| e.to_string())?;
    let status = resp.status().as_u16();
    let text = resp.text().await.map_err(|e| e.to_string())?;
    Ok((status, serde_json::from_str(&text).unwrap_or(Value::String(text))))
}

pub async fn get(url: &str) -> Result<(u16, Value), String> {
    api(reqwest::Method::GET, url, None).await
}

pub async fn post(url: &str, body: Value) -> Result<(u16, Value), String> {
    api(reqwest::Method::POST, url, Some(body)).await
}

/// Polls `f` until it returns Some, failing after `within`.
pub async fn eventually<T, F, Fut>(what: &str, within: Duration, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + within;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out after {within:?} waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The health map of a multiconnect deployment, once the webapp answers.
pub async fn health(url: &str) -> Option<serde_json::Map<String, Value>> {
    let (status, body) = get(&format!("{url}/v1/health")).await.ok()?;
    if status != 200 {
        return None;
    }
    body.get("health")?.as_object().cloned()
}

pub fn status_of(h: &serde_json::Map<String, Value>, key: &str) -> Option<(String, String)> {
    let e = h.get(key)?;
    Some((e.get("gateway_status")?.as_str()?.to_string(), e.get("role")?.as_str()?.to_string()))
}

/// Counts health entries by (gateway_status, role).
pub fn tally(h: &serde_json::Map<String, Value>) -> HashMap<(String, String), usize> {
    let mut m = HashMap::new();
    for v in h.values() {
        if let (Some(s), Some(r)) =
            (v.get("gateway_status").and_then(Value::as_str), v.get("role").and_then(Value::as_str))
        {
            *m.entry((s.to_string(), r.to_string())).or_insert(0) += 1;
        }
    }
    m
}

pub fn count(t: &HashMap<(String, String), usize>, status: &str, role: &str) -> usize {
    t.get(&(status.to_string(), role.to_string())).copied().unwrap_or(0)
}

pub async fn gateway_connections(gateway: &str) -> Vec<Value> {
    let v: Value = reqwest::get(format!("http://{gateway}/admin/connections")).await.unwrap().json().await.unwrap();
    v["connections"].as_array().cloned().unwrap_or_default()
}

pub const WAIT: Duration = Duration::from_secs(30);

/// A certificate for `number` from the gateway, valid for `valid_days`
/// (negative: already expired).
pub async fn cert_for(gateway: &str, number: &str, valid_days: i64) -> String {
    let v: Value = client()
        .post(format!("http://{gateway}/admin/certs"))
        .json(&serde_json::json!({"number": number, "valid_days": valid_days}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    v["cert"].as_str().unwrap().to_string()
}

/// Registers `NUMBER` again through the API (code read from the gateway).
pub async fn register(url: &str, gateway: &str) {
    let account = serde_json::json!({"cc": "1", "phone_number": "5550001111", "method": "sms", "cert": cert_for(gateway, NUMBER, 30).await});
    let (status, body) = post(&format!("{url}/v1/account"), account).await.unwrap();
    assert_eq!(status, 202, "{body}");
    let code: Value =
        reqwest::get(format!("http://{gateway}/admin/codes/15550001111")).await.unwrap().json().await.unwrap();
    let (status, body) =
        post(&format!("{url}/v1/account/verify"), serde_json::json!({"code": code["code"]})).await.unwrap();
    assert_eq!(status, 201, "{body}");
}

/// The registration as a node's control port reports it (emulator-only).
pub async fn account_of(ip: &str) -> Option<Value> {
    let resp = reqwest::get(format!("http://{ip}:6252/control/account")).await.ok()?;
    let v: Value = resp.json().await.ok()?;
    v.get("account").cloned()
}

/// The code the gateway "sent" to `number` (digits), if any.
pub async fn code_sent(gateway: &str, number: &str) -> Option<String> {
    let resp = reqwest::get(format!("http://{gateway}/admin/codes/{number}")).await.ok()?;
    if resp.status().as_u16() != 200 {
        return None;
    }
    let v: Value = resp.json().await.ok()?;
    v["code"].as_str().map(str::to_string)
}

/// `(HTTP status, error code, details)` of an answer.
pub fn error_of(status: u16, body: &Value) -> (u16, i64, String) {
    let e = &body["errors"][0];
    (status, e["code"].as_i64().unwrap_or(0), e["details"].as_str().unwrap_or("").to_string())
}
