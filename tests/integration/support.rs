//! The integration environment: a real control plane from `hack/local-cluster.sh`,
//! the generated CRD, the Helm chart's RBAC, and the operator binary running
//! with that RBAC's ServiceAccount token.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, anyhow, bail, ensure};
use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::{Namespace, ServiceAccount};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Api, Client, Config, ResourceExt};

pub const OPERATOR_NAMESPACE: &str = "whatsapp-operator-system";
pub const RELEASE: &str = "wao";

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Where this run keeps its cluster, logs and kubeconfigs.
pub fn work_dir() -> PathBuf {
    let dir = std::env::var_os("WAO_IT_DIR").map(PathBuf::from).unwrap_or_else(|| repo().join("target/integration"));
    std::fs::create_dir_all(&dir).expect("integration work dir");
    dir
}

fn run(cmd: &mut Command) -> Result<String> {
    let out = cmd.output().with_context(|| format!("running {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed ({}):\n{}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The control plane the suite runs on.
pub struct Cluster {
    pub kubeconfig: PathBuf,
    pub tools: PathBuf,
    dir: PathBuf,
    /// Started here (so torn down here), or given by `WAO_IT_KUBECONFIG`.
    owned: bool,
}

impl Cluster {
    pub fn start() -> Result<Self> {
        let tools = PathBuf::from(run(Command::new(repo().join("hack/tools.sh")).arg("ensure"))?.trim());
        if let Some(kc) = std::env::var_os("WAO_IT_KUBECONFIG") {
            return Ok(Self { kubeconfig: kc.into(), tools, dir: work_dir(), owned: false });
        }
        let dir = work_dir().join("cluster");
        eprintln!("starting the local control plane in {}", dir.display());
        let out = run(Command::new(repo().join("hack/local-cluster.sh")).arg("up").env("WAO_CLUSTER_DIR", &dir))?;
        let kubeconfig =
            PathBuf::from(out.lines().last().ok_or_else(|| anyhow!("local-cluster.sh printed nothing"))?.trim());
        Ok(Self { kubeconfig, tools, dir, owned: true })
    }

    pub fn stop(&self) {
        if self.owned {
            let _ = Command::new(repo().join("hack/local-cluster.sh"))
                .arg("down")
                .env("WAO_CLUSTER_DIR", &self.dir)
                .status();
        }
    }

    /// The API server's own readiness report and the end of every component's
    /// log: what a failure needs when the control plane itself is the cause.
    pub fn report(&self) -> String {
        let ready = self
            .kubectl()
            .args(["get", "--raw", "/readyz?verbose", "--request-timeout=10s"])
            .output()
            .map(|o| format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr)))
            .unwrap_or_else(|e| format!("kubectl failed: {e}"));
        // A full disk stops etcd and with it everything else.
        let disk = Command::new("df")
            .arg("-h")
            .arg(&self.dir)
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default();
        let mut out = format!("--- /readyz ---\n{}\n--- disk ---\n{}", ready.trim_end(), disk);
        if let Ok(entries) = std::fs::read_dir(self.dir.join("logs")) {
            let mut logs: Vec<PathBuf> = entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
            logs.sort();
            for log in logs {
                out += &format!("--- {} (tail) ---\n{}\n", log.display(), tail(&log, 15));
            }
        }
        out
    }

    /// Whether the API server answers `/readyz` within a few seconds.
    pub fn is_ready(&self) -> bool {
        self.kubectl()
            .args(["get", "--raw", "/readyz", "--request-timeout=5s"])
            .output()
            .is_ok_and(|o| o.status.success())
    }

    pub fn kubectl(&self) -> Command {
        let mut c = Command::new(self.tools.join("kubectl"));
        c.arg("--kubeconfig").arg(&self.kubeconfig);
        c
    }

    pub fn helm(&self) -> Command {
        Command::new(self.tools.join("helm"))
    }

    pub async fn admin_client(&self) -> Result<Client> {
        client_from(&self.kubeconfig).await
    }
}

pub async fn client_from(kubeconfig: &Path) -> Result<Client> {
    let kc = Kubeconfig::read_from(kubeconfig)?;
    let config = Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default()).await?;
    Ok(Client::try_from(config)?)
}

/// Installs the CRD exactly as `crdgen` generates it and waits until it is served.
pub async fn install_crd(client: &Client) -> Result<()> {
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    for crd in [whatsapp_operator::api::crd(), whatsapp_operator::api::claim_crd()] {
        let name = crd.name_any();
        api.patch(&name, &PatchParams::apply("integration-tests").force(), &Patch::Apply(&crd)).await?;
        wait_until(Duration::from_secs(30), &format!("the CRD {name} to be established"), || async {
            let crd = api.get(&name).await?;
            Ok(crd
                .status
                .and_then(|s| s.conditions)
                .unwrap_or_default()
                .iter()
                .any(|c| c.type_ == "Established" && c.status == "True"))
        })
        .await?;
    }
    Ok(())
}

/// Renders the Helm chart and applies only its ServiceAccount and RBAC, so the
/// operator below runs with exactly the permissions the chart grants.
/// Returns the ServiceAccount's name.
pub fn apply_chart_rbac(cluster: &Cluster, release: &str, namespace: &str, values: &[&str]) -> Result<String> {
    let mut helm = cluster.helm();
    helm.args(["template", release]).arg(repo().join("charts/whatsapp-operator")).args(["--namespace", namespace]);
    for v in values {
        helm.args(["--set", v]);
    }
    let rendered = run(&mut helm)?;
    let keep = ["ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding"];
    let mut docs = Vec::new();
    let mut service_account = None;
    for value in serde_saphyr::from_multiple::<serde_json::Value>(&rendered)? {
        let kind = value.get("kind").and_then(|k| k.as_str()).unwrap_or_default().to_string();
        if keep.contains(&kind.as_str()) {
            if kind == "ServiceAccount" {
                service_account = value["metadata"]["name"].as_str().map(String::from);
            }
            docs.push(serde_saphyr::to_string(&value)?);
        }
    }
    let service_account = service_account.ok_or_else(|| anyhow!("the chart rendered no ServiceAccount"))?;
    ensure!(docs.len() >= 3, "the chart rendered too little RBAC: {docs:?}");
    let file = work_dir().join(format!("rbac-{release}.yaml"));
    std::fs::write(&file, docs.join("---\n"))?;
    run(cluster.kubectl().args(["create", "namespace", namespace, "--dry-run=client", "-o", "yaml"])).and_then(
        |ns| {
            let ns_file = work_dir().join(format!("ns-{namespace}.yaml"));
            std::fs::write(&ns_file, ns)?;
            run(cluster.kubectl().arg("apply").arg("-f").arg(&ns_file))
        },
    )?;
    run(cluster.kubectl().arg("apply").arg("-f").arg(&file))?;
    Ok(service_account)
}

/// A kubeconfig that authenticates as the ServiceAccount with a fresh token.
pub async fn service_account_kubeconfig(
    cluster: &Cluster,
    admin: &Client,
    namespace: &str,
    sa: &str,
) -> Result<PathBuf> {
    let api: Api<ServiceAccount> = Api::namespaced(admin.clone(), namespace);
    let request = TokenRequest {
        spec: TokenRequestSpec { expiration_seconds: Some(6 * 3600), audiences: vec![], ..Default::default() },
        ..Default::default()
    };
    let token = api
        .create_token_request(sa, &PostParams::default(), &request)
        .await?
        .status
        .ok_or_else(|| anyhow!("no token returned"))?
        .token;
    let mut kc = Kubeconfig::read_from(&cluster.kubeconfig)?;
    for user in kc.auth_infos.iter_mut() {
        if let Some(auth) = user.auth_info.as_mut() {
            auth.client_certificate = None;
            auth.client_certificate_data = None;
            auth.client_key = None;
            auth.client_key_data = None;
            auth.token = Some(token.clone().into());
        }
    }
    let path = work_dir().join(format!("kubeconfig-{namespace}-{sa}"));
    std::fs::write(&path, serde_saphyr::to_string(&kc)?)?;
    Ok(path)
}

/// One operator process, run from the binary under test.
pub struct Operator {
    child: Option<Child>,
    pub metrics_port: u16,
    pub log: PathBuf,
    kubeconfig: PathBuf,
    args: Vec<String>,
    name: String,
}

static STARTS: AtomicU32 = AtomicU32::new(0);

impl Operator {
    pub fn start(name: &str, kubeconfig: &Path, args: &[&str]) -> Result<Self> {
        let mut op = Self {
            child: None,
            metrics_port: 0,
            log: PathBuf::new(),
            kubeconfig: kubeconfig.into(),
            args: args.iter().map(|s| s.to_string()).collect(),
            name: name.into(),
        };
        op.spawn()?;
        Ok(op)
    }

    fn spawn(&mut self) -> Result<()> {
        let n = STARTS.fetch_add(1, Ordering::SeqCst);
        self.metrics_port = free_port()?;
        self.log = work_dir().join(format!("operator-{}-{n}.log", self.name));
        let log = std::fs::File::create(&self.log)?;
        // Another installation passes its own namespace.
        let installation = if self.args.iter().any(|a| a == "--operator-namespace") {
            vec![]
        } else {
            vec!["--operator-namespace", OPERATOR_NAMESPACE]
        };
        let child = Command::new(env!("CARGO_BIN_EXE_whatsapp-operator"))
            .env("KUBECONFIG", &self.kubeconfig)
            .env("RUST_LOG", "info,whatsapp_operator=debug")
            .env_remove("WATCH_NAMESPACE")
            .args(["--metrics-address", &format!("127.0.0.1:{}", self.metrics_port)])
            .args(installation)
            .args(["--identity", &self.name])
            .args(&self.args)
            .stdout(log.try_clone()?)
            .stderr(log)
            .stdin(Stdio::null())
            .spawn()
            .context("starting the operator")?;
        self.child = Some(child);
        Ok(())
    }

    pub fn restart(&mut self) -> Result<()> {
        self.stop();
        self.spawn()
    }

    /// SIGKILL: no chance to release the lease or finish a reconcile.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM, then wait for a graceful exit (or kill after 20 s).
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = Command::new("kill").arg("-TERM").arg(c.id().to_string()).status();
            let deadline = Instant::now() + Duration::from_secs(20);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = c.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn is_running(&mut self) -> bool {
        self.child.as_mut().is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// How the process ended, if it ended by itself (not through `kill` or `stop`).
    pub fn exited_by_itself(&mut self) -> Option<std::process::ExitStatus> {
        self.child.as_mut().and_then(|c| c.try_wait().ok().flatten())
    }

    pub async fn metrics(&self) -> Result<String> {
        let url = format!("http://127.0.0.1:{}/metrics", self.metrics_port);
        Ok(reqwest::get(&url).await?.error_for_status()?.text().await?)
    }

    /// Sum of a counter family over all its label sets.
    pub async fn counter(&self, name: &str) -> Result<f64> {
        Ok(metric_sum(&self.metrics().await?, name))
    }

    pub fn log_tail(&self) -> String {
        tail(&self.log, 40)
    }
}

impl Drop for Operator {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The last `lines` lines of a file.
pub fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

pub fn metric_sum(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// A free port below the ephemeral range (32768 and up on Linux): a port the
/// kernel hands out can meanwhile become an outgoing connection's local port,
/// and a webapp started on it minutes later would fail to listen.
pub fn free_port() -> Result<u16> {
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    for _ in 0..12_000 {
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let port = 20_000 + ((std::process::id() * 131 + n) % 12_000) as u16;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return Ok(port);
        }
    }
    anyhow::bail!("no free port below the ephemeral range")
}

/// Polls `check` until it returns true, failing with `what` after `timeout`.
pub async fn wait_until<F, Fut>(timeout: Duration, what: &str, mut check: F) -> Result<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<bool>>,
{
    let deadline = Instant::now() + timeout;
    let mut last_error = None;
    loop {
        match check().await {
            Ok(true) => return Ok(()),
            Ok(false) => {}
            Err(e) => last_error = Some(e),
        }
        if Instant::now() > deadline {
            bail!(
                "timed out after {timeout:?} waiting for {what}{}",
                last_error.map(|e| format!(" (last error: {e:#})")).unwrap_or_default()
            );
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// A fresh namespace for one test.
pub async fn namespace(client: &Client, prefix: &str) -> Result<String> {
    static N: AtomicU32 = AtomicU32::new(0);
    let name = format!("{prefix}-{}-{}", std::process::id() % 10000, N.fetch_add(1, Ordering::SeqCst));
    let api: Api<Namespace> = Api::all(client.clone());
    let ns: Namespace = serde_json::from_value(serde_json::json!({"metadata": {"name": name}}))?;
    api.create(&PostParams::default(), &ns).await?;
    CREATED_HERE.with(|created| created.borrow_mut().push(name.clone()));
    Ok(name)
}

thread_local! {
    /// The faults a scenario injected, in order.
    static FAULTS_HERE: std::cell::RefCell<Vec<&'static str>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Records that the running scenario injects `what` (a process killed, an
/// object deleted behind the operator's back, a peer that stops answering):
/// the suite reports how many faults it injected and how many the operator
/// survived.
pub fn fault(what: &'static str) {
    FAULTS_HERE.with(|f| f.borrow_mut().push(what));
}

/// The faults recorded on this thread since the last call.
pub fn take_faults() -> Vec<&'static str> {
    FAULTS_HERE.with(|f| std::mem::take(&mut *f.borrow_mut()))
}

thread_local! {
    /// The namespaces a scenario created: its body runs on its test's thread.
    static CREATED_HERE: std::cell::RefCell<Vec<String>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// The namespaces created on this thread since the last call.
pub fn take_created_namespaces() -> Vec<String> {
    CREATED_HERE.with(|created| std::mem::take(&mut *created.borrow_mut()))
}

pub async fn delete_namespace(client: &Client, name: &str) {
    let api: Api<Namespace> = Api::all(client.clone());
    let _ = api.delete(name, &DeleteParams::background()).await;
}

/// The cluster's phone-number claims.
pub fn number_claims(c: &Client) -> Api<whatsapp_operator::api::WhatsAppNumberClaim> {
    Api::all(c.clone())
}

/// Who holds `number`'s claim (`namespace/name/uid`), if anyone.
pub async fn claim_holder(c: &Client, number: &str) -> Result<Option<String>> {
    let claim = number_claims(c).get_opt(&whatsapp_operator::api::claim_name(number)).await?;
    Ok(claim.map(|c| c.spec.holder))
}

/// A TCP proxy to the API server whose traffic can be held: `cut` is a
/// network partition between one process and the API server (connections
/// stay open, nothing gets through, new ones connect and hang), `heal` lets
/// everything held through. TLS passes through untouched.
pub struct Proxy {
    pub port: u16,
    cut: tokio::sync::watch::Sender<bool>,
    accept: tokio::task::JoinHandle<()>,
}

impl Proxy {
    pub async fn start(upstream: String) -> Result<Self> {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", free_port()?)).await?;
        let port = listener.local_addr()?.port();
        let (cut, cut_rx) = tokio::sync::watch::channel(false);
        let accept = tokio::spawn(async move {
            while let Ok((inbound, _)) = listener.accept().await {
                let (upstream, cut) = (upstream.clone(), cut_rx.clone());
                tokio::spawn(async move {
                    let Ok(outbound) = tokio::net::TcpStream::connect(&upstream).await else { return };
                    let (from_client, to_client) = inbound.into_split();
                    let (from_server, to_server) = outbound.into_split();
                    tokio::join!(pipe(from_client, to_server, cut.clone()), pipe(from_server, to_client, cut));
                });
            }
        });
        Ok(Self { port, cut, accept })
    }

    pub fn cut(&self) {
        self.cut.send_replace(true);
    }

    pub fn heal(&self) {
        self.cut.send_replace(false);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.heal();
        self.accept.abort();
    }
}

/// Copies bytes one way, holding them while the link is cut.
async fn pipe(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mut cut: tokio::sync::watch::Receiver<bool>,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        if cut.wait_for(|cut| !*cut).await.is_err() || to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

/// A copy of `kubeconfig` that reaches the API server through the proxy on `proxy_port`.
pub fn kubeconfig_through(kubeconfig: &Path, proxy_port: u16, name: &str) -> Result<PathBuf> {
    let mut kc: serde_json::Value = serde_saphyr::from_str(&std::fs::read_to_string(kubeconfig)?)?;
    kc["clusters"][0]["cluster"]["server"] = format!("https://127.0.0.1:{proxy_port}").into();
    let path = work_dir().join(format!("kubeconfig-through-proxy-{name}"));
    std::fs::write(&path, serde_saphyr::to_string(&kc)?)?;
    Ok(path)
}

/// The API server's address in `kubeconfig`.
pub fn api_server(kubeconfig: &Path) -> Result<String> {
    let kc: serde_json::Value = serde_saphyr::from_str(&std::fs::read_to_string(kubeconfig)?)?;
    let server = kc["clusters"][0]["cluster"]["server"].as_str().ok_or_else(|| anyhow!("no server"))?;
    Ok(server.trim_start_matches("https://").trim_end_matches('/').to_string())
}
