//! The whatsapp-operator process: flags, logging, the probe and metrics
//! endpoint, leader election, and the controller.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use clap::Parser;
use kube::Client;
use kube::runtime::events::Reporter;
use tokio::sync::watch;
use tracing::{error, info};

use whatsapp_operator::leader::{self, Election};
use whatsapp_operator::telemetry::{self, LogFormat, metrics::Metrics, server};
use whatsapp_operator::{controller, heap};

#[derive(Parser, Debug)]
#[command(
    name = "whatsapp-operator",
    version,
    about = "Runs WhatsApp Business API multiconnect deployments from WhatsAppNumber resources"
)]
struct Args {
    #[command(subcommand)]
    command: Option<Command>,

    /// Watch only this namespace; empty watches all namespaces.
    #[arg(long, env = "WATCH_NAMESPACE", default_value = "")]
    namespace: String,

    /// Log line format.
    #[arg(long, env = "LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,

    /// Address of the /metrics, /healthz and /readyz endpoint.
    #[arg(long, env = "METRICS_ADDRESS", default_value = "0.0.0.0:8080")]
    metrics_address: SocketAddr,

    /// Compete for a Lease so that only one replica reconciles.
    #[arg(long, env = "LEADER_ELECTION", default_value_t = true, action = clap::ArgAction::Set)]
    leader_election: bool,

    /// Name of the leader Lease.
    #[arg(long, env = "LEASE_NAME", default_value = "whatsapp-operator")]
    lease_name: String,

    /// The operator's own namespace: it holds the leader Lease and names this
    /// installation in the number claims it grants.
    #[arg(long, env = "POD_NAMESPACE", default_value = "default")]
    operator_namespace: String,

    /// This replica's identity in leader election and events; defaults to the host name.
    #[arg(long, env = "POD_NAME")]
    identity: Option<String>,

    /// Reach a WhatsAppNumber's webapp at this URL instead of its in-cluster
    /// Service, as `NAMESPACE/NAME=https://host:port` (repeatable; for running
    /// the operator outside the cluster).
    #[arg(long = "webapp-url", env = "WEBAPP_URLS", value_delimiter = ',', value_parser = parse_webapp_url)]
    webapp_urls: Vec<(String, String)>,

    /// ConfigMap in the operator's namespace whose `catalog.yaml` extends the
    /// built-in release catalog (version, releasedAt, expiresAt).
    #[arg(long, env = "RELEASE_CATALOG_CONFIGMAP", default_value = "whatsapp-operator-release-catalog")]
    release_catalog_configmap: String,

    /// Webapp health probes running at once, across all WhatsAppNumbers. A
    /// slow or dead webapp holds one of them for at most four times its
    /// `spec.health.timeoutSeconds`.
    #[arg(long, env = "PROBE_CONCURRENCY", default_value_t = 16, value_parser = clap::value_parser!(u16).range(1..))]
    probe_concurrency: u16,

    /// WhatsAppNumbers reconciled at once. While every slot is busy, numbers
    /// take their turns in the order their reconciles were asked for. New
    /// numbers (never reconciled) also have a quarter more slots kept for them
    /// (at least one), so their first status never waits behind others' rollouts.
    #[arg(long, env = "RECONCILE_CONCURRENCY", default_value_t = 16, value_parser = clap::value_parser!(u16).range(1..))]
    reconcile_concurrency: u16,
}

#[derive(clap::Subcommand, Debug)]
enum Command {
    /// Print, as YAML and without a cluster, every object the operator would
    /// create for the WhatsAppNumbers in FILE (`-` reads standard input).
    Render { file: std::path::PathBuf },
}

fn render(file: &std::path::Path) -> fatal::Result {
    let yaml = if file.as_os_str() == "-" {
        std::io::read_to_string(std::io::stdin()).map_err(|e| format!("cannot read standard input: {e}"))?
    } else {
        std::fs::read_to_string(file).map_err(|e| format!("cannot read {}: {e}", file.display()))?
    };
    print!("{}", whatsapp_operator::render::render(&yaml)?);
    Ok(())
}

fn parse_webapp_url(s: &str) -> Result<(String, String), String> {
    let (key, url) = s.split_once('=').ok_or("expected NAMESPACE/NAME=URL")?;
    let (namespace, name) = key.split_once('/').ok_or("expected NAMESPACE/NAME before '='")?;
    if namespace.is_empty() || name.is_empty() || !url.starts_with("https://") {
        return Err("expected NAMESPACE/NAME=https://host:port".into());
    }
    Ok((key.to_string(), url.trim_end_matches('/').to_string()))
}

#[tokio::main]
async fn main() -> fatal::Result {
    let args = Args::parse();
    if let Some(Command::Render { file }) = &args.command {
        return render(file);
    }
    telemetry::init_logging(args.log_format);

    let (stop_tx, stop_rx) = watch::channel(false);
    tokio::spawn(async move {
        shutdown_signal().await;
        info!("shutdown requested");
        let _ = stop_tx.send(true);
    });
    let stopped = move || {
        let mut rx = stop_rx.clone();
        async move {
            let _ = rx.wait_for(|s| *s).await;
        }
    };

    let metrics = Arc::new(Metrics::default());
    // Resident memory follows what the operator keeps, not its busiest moment.
    tokio::spawn(heap::trim_periodically({
        let metrics = metrics.clone();
        move |usage| metrics.record_heap(usage)
    }));
    let ready = Arc::new(AtomicBool::new(false));
    let probes = server::Probes { metrics: metrics.clone(), ready: ready.clone() };
    let listener = server::bind(args.metrics_address)
        .await
        .map_err(|e| format!("cannot listen on {} for metrics and probes: {e}", args.metrics_address))?;
    let serving = server::serve(listener, probes, stopped());
    let http = tokio::spawn(async move {
        if let Err(e) = serving.await {
            error!(error = %e, "the metrics and probe server stopped");
        }
    });

    let client = Client::try_default().await.map_err(|e| format!("cannot configure the Kubernetes client: {e}"))?;
    client.apiserver_version().await.map_err(|e| format!("cannot reach the Kubernetes API server: {e}"))?;
    ready.store(true, Ordering::Relaxed);

    let identity = args.identity.clone().unwrap_or_else(hostname);
    let reporter = Reporter { controller: "whatsapp-operator".into(), instance: Some(identity.clone()) };
    let namespace = (!args.namespace.is_empty()).then(|| args.namespace.clone());
    let settings = controller::Settings {
        operator_namespace: args.operator_namespace.clone(),
        webapp_urls: args.webapp_urls.iter().cloned().collect(),
        release_catalog: args.release_catalog_configmap.clone(),
        probe_concurrency: usize::from(args.probe_concurrency),
        reconcile_concurrency: args.reconcile_concurrency,
    };
    info!(namespace = namespace.as_deref().unwrap_or("<all>"), %identity, "starting");

    if args.leader_election {
        let mut election = Election::start(client.clone(), &args.operator_namespace, &args.lease_name, &identity)
            .await
            .map_err(|e| format!("cannot start leader election: {e}"))?;
        tokio::select! {
            _ = election.acquired() => {}
            _ = stopped() => { election.release().await; return Ok(()); }
        }
        metrics.leader.set(1);
        let (lost_tx, lost_rx) = watch::channel(false);
        let stop_controller = {
            let stopped = stopped();
            let mut lost_rx = lost_rx.clone();
            async move {
                tokio::select! {
                    _ = stopped => {}
                    _ = lost_rx.wait_for(|l| *l) => {}
                }
            }
        };
        // Tasks of their own: however busy the controller is, the lease is
        // watched (and renewed) on time.
        let mut run = tokio::spawn(controller::run(
            client.clone(),
            namespace,
            settings,
            metrics.clone(),
            reporter,
            stop_controller,
        ));
        let mut unconfirmed = tokio::spawn(leader::unconfirmed(
            client.clone(),
            args.operator_namespace.clone(),
            args.lease_name.clone(),
            identity.clone(),
        ));
        tokio::select! {
            _ = &mut run => { unconfirmed.abort(); }
            // No reconcile is let finish: another replica may lead already,
            // or will once the lease expires.
            _ = election.lost() => {
                error!("lost the leader lease; stopping so that a restart re-joins the election");
                let _ = lost_tx.send(true);
                metrics.leader.set(0);
                return Err("lost the leader lease".into());
            }
            why = &mut unconfirmed => {
                let why = why.unwrap_or_else(|e| format!("the task watching the lease failed: {e}"));
                error!(%why, "cannot see the leader lease renewed before it expires; stopping before another replica takes over");
                let _ = lost_tx.send(true);
                metrics.leader.set(0);
                return Err("the leader lease could not be renewed".into());
            }
        }
        metrics.leader.set(0);
        election.release().await;
    } else {
        metrics.leader.set(1);
        controller::run(client, namespace, settings, metrics.clone(), reporter, stopped()).await;
    }
    let _ = http.await;
    info!("stopped");
    Ok(())
}

fn hostname() -> String {
    std::env::var("HOSTNAME")
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| format!("whatsapp-operator-{}", std::process::id()))
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("SIGTERM handler");
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}

/// A `main` result whose error prints as a plain sentence.
mod fatal {
    pub type Result = std::result::Result<(), Message>;

    pub struct Message(String);

    impl std::fmt::Debug for Message {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str(&self.0)
        }
    }

    impl From<String> for Message {
        fn from(s: String) -> Self {
            Self(s)
        }
    }

    impl From<&str> for Message {
        fn from(s: &str) -> Self {
            Self(s.into())
        }
    }
}
