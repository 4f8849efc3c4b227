//! Emulator processes standing in for the pods' containers: a gateway, the
//! schema upgrade, masters, coreapps and a webapp, on real MariaDB, each node
//! on its own loopback address with the standard ports.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};

use anyhow::{Context as _, Result, bail, ensure};

use crate::support::{repo, work_dir};

/// The database server the emulators use (from `hack/databases.sh env`).
#[derive(Clone, Debug)]
pub struct Database {
    pub host: String,
    pub port: String,
    pub user: String,
    pub password: String,
}

fn run(cmd: &mut Command) -> Result<String> {
    let out = cmd.output().with_context(|| format!("running {cmd:?}"))?;
    ensure!(out.status.success(), "{cmd:?}: {}", String::from_utf8_lossy(&out.stderr));
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// MariaDB from the environment `hack/test.sh` exports, or started here.
/// Unique to one run of the suite, so that databases an earlier run left on a
/// reused server are never picked up (process ids repeat across runs).
fn run_id() -> &'static str {
    static ID: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    ID.get_or_init(|| {
        let secs = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
        format!("{}_{}", std::process::id(), secs % 1_000_000)
    })
}

pub fn database() -> Result<Database> {
    // Parallel scenarios must not start the servers twice.
    static DB: std::sync::Mutex<Option<Database>> = std::sync::Mutex::new(None);
    let mut guard = DB.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(db) = guard.as_ref() {
        return Ok(db.clone());
    }
    let mut vars: HashMap<String, String> = std::env::vars().collect();
    let reachable = |v: &HashMap<String, String>| match (v.get("WAO_MYSQL_HOST"), v.get("WAO_MYSQL_PORT")) {
        (Some(h), Some(p)) => std::net::TcpStream::connect(format!("{h}:{p}")).is_ok(),
        _ => false,
    };
    if !reachable(&vars) {
        run(Command::new(repo().join("hack/databases.sh")).arg("up"))?;
        let env = run(Command::new(repo().join("hack/databases.sh")).arg("env"))?;
        for line in env.lines() {
            if let Some((k, v)) = line.trim_start_matches("export ").split_once('=') {
                vars.insert(k.to_string(), v.trim_matches(['\'', '"']).to_string());
            }
        }
    }
    let get = |k: &str| vars.get(k).cloned().with_context(|| format!("{k} is not set by hack/databases.sh"));
    let db = Database {
        host: get("WAO_MYSQL_HOST")?,
        port: get("WAO_MYSQL_PORT")?,
        user: get("WAO_MYSQL_USER")?,
        password: get("WAO_MYSQL_PASSWORD")?,
    };
    *guard = Some(db.clone());
    Ok(db)
}

/// The emulator binary, built once per run.
pub fn binary() -> Result<PathBuf> {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    if let Some(p) = BUILT.get() {
        return Ok(p.clone());
    }
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    run(Command::new(cargo).current_dir(repo()).args([
        "build",
        "--quiet",
        "-p",
        "whatsapp-emulator",
        "--bin",
        "whatsapp-emulator",
    ]))?;
    let target = std::env::var_os("CARGO_TARGET_DIR").map(PathBuf::from).unwrap_or_else(|| repo().join("target"));
    Ok(BUILT.get_or_init(|| target.join("debug/whatsapp-emulator")).clone())
}

/// A CA and a certificate for 127.0.0.1 signed by it (PEM files in `dir`).
pub struct Pki {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

pub fn pki(dir: &Path) -> Result<Pki> {
    std::fs::create_dir_all(dir)?;
    let p = |f: &str| dir.join(f);
    let ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"];
    run(Command::new("openssl")
        .args(["req", "-x509"])
        .args(ec)
        .args(["-days", "2", "-subj", "/CN=emulator test CA"])
        .args(["-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign"])
        .arg("-keyout")
        .arg(p("ca.key"))
        .arg("-out")
        .arg(p("ca.crt")))?;
    run(Command::new("openssl")
        .arg("req")
        .args(ec)
        .args(["-subj", "/CN=127.0.0.1"])
        .arg("-keyout")
        .arg(p("tls.key"))
        .arg("-out")
        .arg(p("tls.csr")))?;
    std::fs::write(
        p("ext.cnf"),
        "subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\nkeyUsage=digitalSignature\nextendedKeyUsage=serverAuth\n",
    )?;
    run(Command::new("openssl")
        .args(["x509", "-req", "-days", "2", "-CAcreateserial"])
        .arg("-in")
        .arg(p("tls.csr"))
        .arg("-CA")
        .arg(p("ca.crt"))
        .arg("-CAkey")
        .arg(p("ca.key"))
        .arg("-extfile")
        .arg(p("ext.cnf"))
        .arg("-out")
        .arg(p("tls.crt")))?;
    Ok(Pki { ca: p("ca.crt"), cert: p("tls.crt"), key: p("tls.key") })
}

struct Node {
    name: String,
    /// The container-id half of the node id `<hostname>:<container_id>`.
    container_id: String,
    child: Option<Child>,
}

/// One emulated multiconnect deployment of one number.
pub struct Deployment {
    env: Vec<(String, String)>,
    dir: PathBuf,
    nodes: Vec<Node>,
    gateway: Option<Child>,
}

static NEXT_ADDRESS: AtomicU32 = AtomicU32::new(1);

/// A loopback address no other node uses: each run takes its own block of
/// 127.0.0.0/8 (two suites may run on one machine at once), and an address
/// whose node ports another process holds is skipped.
fn next_address() -> String {
    let block = 64 + std::process::id() % 128;
    loop {
        let n = NEXT_ADDRESS.fetch_add(1, Ordering::SeqCst);
        let address = format!("127.{block}.{}.{}", n / 250 % 250, n % 250 + 2);
        let free = (6250..=6253).all(|port| std::net::TcpListener::bind((address.as_str(), port)).is_ok());
        if free {
            return address;
        }
    }
}

fn free_port() -> Result<u16> {
    crate::support::free_port()
}

impl Deployment {
    /// Starts a gateway and creates the schema at `version`; nodes come after.
    /// `timing` is (heartbeat, unhealthy) seconds.
    pub fn start(name: &str, number: &str, version: &str, timing: (u32, u32)) -> Result<Self> {
        Self::start_with(name, number, version, timing, None)
    }

    /// Like `start`, for a number nobody registered yet: registration goes
    /// through the API, with the code the emulated WhatsApp "sends".
    pub fn start_unregistered(name: &str, number: &str, version: &str, timing: (u32, u32)) -> Result<Self> {
        Self::start_inner(name, number, version, timing, None, false)
    }

    /// Like `start`; with `catalog`, the emulator uses that release catalog
    /// and the real clock instead of its fixed test date.
    pub fn start_with(
        name: &str,
        number: &str,
        version: &str,
        timing: (u32, u32),
        catalog: Option<&Path>,
    ) -> Result<Self> {
        Self::start_inner(name, number, version, timing, catalog, true)
    }

    fn start_inner(
        name: &str,
        number: &str,
        version: &str,
        timing: (u32, u32),
        catalog: Option<&Path>,
        registered: bool,
    ) -> Result<Self> {
        let db = database()?;
        let dir = work_dir().join(format!("emulated-{name}"));
        std::fs::create_dir_all(&dir)?;
        let gateway_port = free_port()?;
        let gateway = format!("127.0.0.1:{gateway_port}");
        let db_prefix = format!("it_{}_{}", name.replace('-', "_"), run_id());
        let env = vec![
            ("WA_DB_ENGINE", "MYSQL".to_string()),
            ("WA_DB_HOSTNAME", db.host),
            ("WA_DB_PORT", db.port),
            ("WA_DB_USERNAME", db.user),
            ("WA_DB_PASSWORD", db.password),
            ("WA_APP_MULTICONNECT", "1".into()),
            ("WA_DB_NAME_PREFIX", db_prefix),
            ("WA_EMULATOR_VERSION", version.into()),
            ("WA_EMULATOR_NOW", "2024-03-01T00:00:00Z".into()),
            ("WA_EMULATOR_GATEWAY", gateway.clone()),
            ("WA_EMULATOR_REGISTERED_NUMBER", number.into()),
            ("WA_EMULATOR_HEARTBEAT_INTERVAL", timing.0.to_string()),
            ("WA_EMULATOR_UNHEALTHY_INTERVAL", timing.1.to_string()),
            ("RUST_LOG", "info,sqlx=warn".into()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect::<Vec<_>>();
        let env: Vec<(String, String)> =
            env.into_iter().filter(|(k, _)| registered || k != "WA_EMULATOR_REGISTERED_NUMBER").collect();
        let env = match catalog {
            Some(path) => env
                .into_iter()
                .filter(|(k, _)| k != "WA_EMULATOR_NOW")
                .chain([("WA_EMULATOR_RELEASE_CATALOG".to_string(), path.display().to_string())])
                .collect(),
            None => env,
        };
        let mut d = Self { env, dir, nodes: vec![], gateway: None };
        // A number logged off asks for a second code soon after its first:
        // WhatsApp's wait between two requests, shortened.
        let code_retry = [("WA_EMULATOR_CODE_RETRY_SECONDS", "10")];
        d.gateway = Some(d.spawn("gateway", &code_retry, &["gateway", "--listen", &gateway])?);
        let status = d.command("upgrade", &[("WA_DB_UPGRADE", "1")], &[])?.status()?;
        ensure!(status.success(), "the schema creation failed: {}", d.log("upgrade"));
        Ok(d)
    }

    /// The code the emulated WhatsApp sent to `number`, if any.
    pub async fn sent_code(&self, number: &str) -> Result<Option<String>> {
        let gateway = self.env.iter().find(|(k, _)| k == "WA_EMULATOR_GATEWAY").map(|(_, v)| v.clone());
        let gateway = gateway.ok_or_else(|| anyhow::anyhow!("no gateway"))?;
        let digits: String = number.chars().filter(char::is_ascii_digit).collect();
        let response = reqwest::get(format!("http://{gateway}/admin/codes/{digits}")).await?;
        if response.status() == reqwest::StatusCode::NOT_FOUND {
            return Ok(None);
        }
        let v: serde_json::Value = response.error_for_status()?.json().await?;
        Ok(v.get("code").and_then(|c| c.as_str()).map(String::from))
    }

    /// A second deployment of the same number, with its own database but the
    /// same gateway (WhatsApp's servers): another instance of the client,
    /// outside the cluster.
    pub fn another_instance(&self, name: &str) -> Result<Self> {
        self.instance(name, true)
    }

    /// Like `another_instance`, with a database in which the number was never
    /// registered: a new setup for the number to move to.
    pub fn new_setup(&self, name: &str) -> Result<Self> {
        self.instance(name, false)
    }

    fn instance(&self, name: &str, registered: bool) -> Result<Self> {
        let dir = work_dir().join(format!("emulated-{name}"));
        std::fs::create_dir_all(&dir)?;
        let prefix = format!("it_{}_{}", name.replace('-', "_"), run_id());
        let env = self
            .env
            .iter()
            .filter(|(k, _)| registered || k != "WA_EMULATOR_REGISTERED_NUMBER")
            .map(|(k, v)| if k == "WA_DB_NAME_PREFIX" { (k.clone(), prefix.clone()) } else { (k.clone(), v.clone()) })
            .collect();
        let d = Self { env, dir, nodes: vec![], gateway: None };
        let status = d.command("upgrade", &[("WA_DB_UPGRADE", "1")], &[])?.status()?;
        ensure!(status.success(), "the schema creation failed: {}", d.log("upgrade"));
        Ok(d)
    }

    fn command(&self, name: &str, extra: &[(&str, &str)], args: &[&str]) -> Result<Command> {
        let log = std::fs::OpenOptions::new().create(true).append(true).open(self.dir.join(format!("{name}.log")))?;
        let mut cmd = Command::new(binary()?);
        cmd.envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .envs(extra.iter().copied())
            .args(args)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        Ok(cmd)
    }

    fn spawn(&self, name: &str, extra: &[(&str, &str)], args: &[&str]) -> Result<Child> {
        Ok(self.command(name, extra, args)?.spawn()?)
    }

    pub fn log(&self, name: &str) -> String {
        std::fs::read_to_string(self.dir.join(format!("{name}.log"))).unwrap_or_default()
    }

    /// A master (`master: true`) or coreapp node; returns its address.
    pub fn node(&mut self, master: bool) -> Result<String> {
        let address = next_address();
        let name = format!("{}-{address}", if master { "master" } else { "coreapp" });
        let container_id = format!("{:012x}", NEXT_ADDRESS.load(Ordering::SeqCst) as u64 * 7919);
        let mut extra =
            vec![("COREAPP_HOSTNAME", address.as_str()), ("WA_EMULATOR_CONTAINER_ID", container_id.as_str())];
        if master {
            extra.push(("WA_MASTER_NODE", "1"));
        }
        let mut cmd = self.command(&name, &extra, &[])?;
        let mut child = cmd.stderr(Stdio::piped()).spawn()?;
        let stderr = child.stderr.take().ok_or_else(|| anyhow::anyhow!("no stderr"))?;
        let (plain, cri) = (self.dir.join(format!("{name}.log")), self.cri_log(&name));
        std::thread::spawn(move || container_log(stderr, &plain, &cri));
        self.nodes.push(Node { name, container_id, child: Some(child) });
        Ok(address)
    }

    fn cri_log(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}.cri.log"))
    }

    /// The container logs of the masters and coreapps, in the order they were
    /// started, as a container runtime keeps them (CRI format): what a
    /// kubelet serves as pods/log.
    pub fn container_logs(&self) -> Vec<PathBuf> {
        self.nodes.iter().map(|n| self.cri_log(&n.name)).collect()
    }

    /// The webapp on a free loopback port with the given API key. It serves
    /// the client's own certificate, or the one uploaded through its API.
    pub fn webapp(&mut self, api_key: &str, port: u16) -> Result<String> {
        let listen = format!("127.0.0.1:{port}");
        let child = self.spawn(
            "webapp",
            &[("WA_EMULATOR_IMAGE", "web"), ("WA_EMULATOR_WEB_LISTEN", &listen), ("WA_API_KEY", api_key)],
            &[],
        )?;
        self.nodes.push(Node { name: "webapp".into(), container_id: String::new(), child: Some(child) });
        Ok(format!("https://{listen}"))
    }

    /// Stops the webapp (as a pod restart would), to start it again with `webapp`.
    pub fn stop_webapp(&mut self) {
        for node in self.nodes.iter_mut().filter(|n| n.name == "webapp") {
            if let Some(mut c) = node.child.take() {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
        self.nodes.retain(|n| n.name != "webapp");
    }

    /// A valid certificate of `number`, as WhatsApp Manager hands it out
    /// (the emulated gateway issues it).
    pub fn certificate(&self, number: &str) -> Result<String> {
        let out = self.command("cert", &[], &["cert", "--number", number])?.stdout(Stdio::piped()).output()?;
        ensure!(out.status.success(), "whatsapp-emulator cert failed: {}", self.log("cert"));
        Ok(String::from_utf8(out.stdout)?.trim().to_string())
    }

    /// Nodes started from now on run this client version.
    pub fn set_version(&mut self, version: &str) {
        for (k, v) in &mut self.env {
            if k == "WA_EMULATOR_VERSION" {
                *v = version.to_string();
            }
        }
    }

    /// Runs the schema upgrade at the current version (`WA_DB_UPGRADE=1`) to its end.
    pub fn upgrade_schema(&self) -> Result<()> {
        let status = self.command("upgrade", &[("WA_DB_UPGRADE", "1")], &[])?.status()?;
        ensure!(status.success(), "the schema upgrade failed: {}", self.log("upgrade"));
        Ok(())
    }

    /// Stops every master, coreapp and webapp (the gateway stays: it is WhatsApp's side).
    pub fn stop_all(&mut self) {
        for node in &mut self.nodes {
            if let Some(mut c) = node.child.take() {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
    }

    /// Kills (SIGKILL) the node with this `<hostname>:<container_id>`.
    pub fn kill_node(&mut self, node_id: &str) -> Result<()> {
        let container = node_id.rsplit_once(':').map_or(node_id, |(_, c)| c);
        let Some(node) = self.nodes.iter_mut().find(|n| !n.container_id.is_empty() && n.container_id == container)
        else {
            bail!("no emulated node {node_id}");
        };
        if let Some(mut c) = node.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        Ok(())
    }

    /// The tails of every node's log, for failure messages.
    pub fn logs(&self) -> String {
        self.nodes
            .iter()
            .map(|n| {
                let text = self.log(&n.name);
                let lines: Vec<&str> = text.lines().collect();
                format!("--- {} ---\n{}", n.name, lines[lines.len().saturating_sub(8)..].join("\n"))
            })
            .collect::<Vec<_>>()
            .join("\n")
    }
}

/// Copies a node's stderr (where the emulator logs) into its plain log and,
/// line by line with a timestamp, into a CRI-format log.
fn container_log(stderr: std::process::ChildStderr, plain: &Path, cri: &Path) {
    use std::io::{BufRead, Write};
    let open = |p: &Path| std::fs::OpenOptions::new().create(true).append(true).open(p);
    let (Ok(mut plain), Ok(mut cri)) = (open(plain), open(cri)) else { return };
    for line in std::io::BufReader::new(stderr).lines() {
        let Ok(line) = line else { return };
        let _ = writeln!(plain, "{line}");
        let _ = writeln!(cri, "{} stderr F {line}", jiff::Timestamp::now());
    }
}

impl Drop for Deployment {
    fn drop(&mut self) {
        for node in &mut self.nodes {
            if let Some(mut c) = node.child.take() {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
        if let Some(mut g) = self.gateway.take() {
            let _ = g.kill();
            let _ = g.wait();
        }
    }
}

/// An S3-compatible object store (`hack/object-store`) over HTTPS on
/// loopback, which accepts one access key and checks every signature. It
/// keeps objects in memory: a stop loses them.
pub struct ObjectStore {
    pub endpoint: String,
    pub ca: PathBuf,
    pub bucket: String,
    pub access_key_id: String,
    pub secret_access_key: String,
    command: PathBuf,
    args: Vec<std::ffi::OsString>,
    listen: String,
    child: Option<Child>,
}

impl ObjectStore {
    pub fn start(name: &str, bucket: &str) -> Result<Self> {
        let dir = work_dir().join(format!("object-store-{name}"));
        let tls = pki(&dir)?;
        let tools = run(Command::new(repo().join("hack/tools.sh")).arg("object-store"))?;
        let port = free_port()?;
        let listen = format!("127.0.0.1:{port}");
        let (access_key_id, secret_access_key) = (format!("AK{name}"), format!("secret-of-{name}"));
        std::fs::File::create(dir.join("store.log"))?;
        let args =
            ["-listen", &listen, "-bucket", bucket, "-access-key", &access_key_id, "-secret-key", &secret_access_key]
                .into_iter()
                .map(std::ffi::OsString::from)
                .chain(["-tls-cert".into(), tls.cert.into_os_string(), "-tls-key".into(), tls.key.into_os_string()])
                .collect();
        let mut store = Self {
            endpoint: format!("https://{listen}"),
            ca: tls.ca,
            bucket: bucket.into(),
            access_key_id,
            secret_access_key,
            command: PathBuf::from(tools.trim()).join("wao-object-store"),
            args,
            listen,
            child: None,
        };
        store.resume()?;
        Ok(store)
    }

    /// Stops the store: its port refuses connections, its objects are gone.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the store again on its port, with its bucket and no objects.
    pub fn resume(&mut self) -> Result<()> {
        let log = std::fs::OpenOptions::new().append(true).open(self.ca.with_file_name("store.log"))?;
        let child = Command::new(&self.command)
            .args(&self.args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()?;
        self.child = Some(child);
        for _ in 0..100 {
            if std::net::TcpStream::connect(&self.listen).is_ok() {
                return Ok(());
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        bail!("the object store did not listen on {}: {}", self.listen, self.log())
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.ca.with_file_name("store.log")).unwrap_or_default()
    }

    /// A client of the store as the operator builds one.
    pub fn client(&self) -> Result<whatsapp_operator::backups::object_store::Store> {
        let spec: whatsapp_operator::api::ObjectStore = serde_json::from_value(serde_json::json!({
            "bucket": self.bucket, "endpoint": self.endpoint, "credentialsSecretRef": {"name": "unused"}
        }))?;
        let access = whatsapp_operator::backups::object_store::Access {
            access_key_id: self.access_key_id.clone(),
            secret_access_key: self.secret_access_key.clone(),
            ca: Some(std::fs::read(&self.ca)?),
        };
        whatsapp_operator::backups::object_store::Store::connect(&spec, &access).map_err(anyhow::Error::msg)
    }
}

impl Drop for ObjectStore {
    fn drop(&mut self) {
        self.stop();
    }
}
