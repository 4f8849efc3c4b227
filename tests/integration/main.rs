//! Integration suite against a real control plane: etcd, kube-apiserver,
//! kube-controller-manager, kube-scheduler and kwok, started by
//! `hack/local-cluster.sh` (or reused from `WAO_IT_KUBECONFIG`).
//!
//! The operator runs as a process with exactly the Helm chart's RBAC. Tests run
//! in parallel, each in its own namespace; tests that stop or replace the
//! operator, or count its writes, run alone.

mod emulated;
mod fencing;
mod gateway;
mod scenarios;
mod support;
mod upgrades;

use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::{Mutex, OnceLock, RwLock};
use std::time::Duration;

use anyhow::Result;
use kube::Client;
use libtest_mimic::{Arguments, Failed, Trial};
use support::{Cluster, OPERATOR_NAMESPACE, Operator, RELEASE};

pub struct Env {
    pub cluster: Cluster,
    pub admin: Client,
    /// The cluster-scoped operator most tests rely on.
    pub operator: Mutex<Operator>,
    /// Kubeconfig of the chart's ServiceAccount (cluster scope).
    pub operator_kubeconfig: PathBuf,
    /// Namespace and webapp port per gateway scenario: the operator is told
    /// where each one's (emulated) webapp listens.
    pub gateway_slots: Vec<(&'static str, String, u16)>,
    exclusive: RwLock<()>,
    runtime: tokio::runtime::Runtime,
}

impl Env {
    /// The shared operator's metrics, without holding its lock across the request.
    pub async fn operator_metrics(&self) -> anyhow::Result<String> {
        let port = self.operator.lock().unwrap_or_else(|e| e.into_inner()).metrics_port;
        Ok(reqwest::get(format!("http://127.0.0.1:{port}/metrics")).await?.error_for_status()?.text().await?)
    }

    /// Everything the running operator process has logged.
    pub fn operator_log(&self) -> String {
        let path = self.operator.lock().unwrap_or_else(|e| e.into_inner()).log.clone();
        std::fs::read_to_string(path).unwrap_or_default()
    }

    /// `(namespace, webapp port)` reserved for a gateway scenario.
    pub fn slot(&self, scenario: &str) -> (String, u16) {
        let (_, ns, port) = self.gateway_slots.iter().find(|(s, _, _)| *s == scenario).expect("a reserved slot");
        (ns.clone(), *port)
    }
}

/// The gateway scenarios; each gets a namespace and a webapp port at start-up.
const GATEWAY_SCENARIOS: [&str; 8] = ["health", "shards", "upgrade", "auto", "conflict", "life", "objects", "hanging"];

static ENV: OnceLock<Env> = OnceLock::new();

/// The faults each scenario injected (see `support::fault`), and whether the
/// operator came through them (the scenario passed).
static INJECTED: Mutex<Vec<(&str, Vec<&str>, bool)>> = Mutex::new(Vec::new());

/// One line per scenario that injected faults, then the totals.
fn fault_report() -> String {
    let injected = INJECTED.lock().unwrap_or_else(|e| e.into_inner());
    let mut out = String::from("faults injected:\n");
    let (mut total, mut survived) = (0, 0);
    for (scenario, faults, passed) in injected.iter() {
        let mut kinds: Vec<&str> = faults.clone();
        kinds.dedup();
        let verdict = if *passed { "survived" } else { "FAILED" };
        out += &format!("  {scenario}: {} ({verdict}): {}\n", faults.len(), kinds.join("; "));
        total += faults.len();
        survived += if *passed { faults.len() } else { 0 };
    }
    out += &format!("  {total} faults in {} scenarios, {survived} survived", injected.len());
    out
}

type Scenario = fn(&'static Env) -> Pin<Box<dyn Future<Output = Result<()>>>>;

/// `scenario!(module::function)`, or `scenario!(module::function, alone)` for
/// one that stops or replaces the operator or counts its writes: a trial
/// named after the function (the gateway ones prefixed with `gateway_`).
macro_rules! scenario {
    ($module:ident :: $f:ident) => {
        scenario!(@ $module::$f, false)
    };
    ($module:ident :: $f:ident, alone) => {
        scenario!(@ $module::$f, true)
    };
    (@ gateway :: $f:ident, $alone:expr) => {
        (concat!("gateway_", stringify!($f)), $alone, (|e| Box::pin(gateway::$f(e))) as Scenario)
    };
    (@ $module:ident :: $f:ident, $alone:expr) => {
        (stringify!($f), $alone, (|e| Box::pin($module::$f(e))) as Scenario)
    };
}

/// `(name, runs alone, body)`.
const SCENARIOS: &[(&str, bool, Scenario)] = &[
    scenario!(scenarios::crd_rejects_invalid_input),
    scenario!(scenarios::ha_example_reconciles),
    scenario!(scenarios::multiconnect_example_reconciles),
    scenario!(scenarios::spec_change_shows_progressing_then_ready),
    scenario!(scenarios::obsolete_children_are_removed),
    scenario!(scenarios::deleting_keeps_retained_media_only),
    scenario!(scenarios::missing_secret_then_ready),
    scenario!(scenarios::a_running_numbers_lost_pod_is_an_outage_not_progress),
    scenario!(scenarios::a_rollout_that_stops_moving_fails_at_its_deadline),
    scenario!(scenarios::a_number_held_by_its_database_starts_once_the_holder_goes),
    scenario!(scenarios::duplicate_number_waits_for_the_holder),
    scenario!(scenarios::racing_claims_end_with_one_holder),
    scenario!(fencing::deletion_waits_for_the_holders_pods),
    scenario!(fencing::deletion_stops_the_schema_upgrade_before_releasing_the_number),
    scenario!(fencing::a_re_created_object_waits_for_the_earlier_ones_pods),
    scenario!(fencing::a_stray_node_pod_keeps_a_number_from_starting),
    scenario!(fencing::a_deleted_claim_stays_with_the_running_instance),
    scenario!(fencing::claims_hold_across_installations, alone),
    scenario!(scenarios::claims_taken_over_and_lost),
    scenario!(gateway::health_reaches_ready_and_fails_over),
    scenario!(gateway::shards_change_through_the_api),
    scenario!(gateway::a_numbers_life_as_code),
    scenario!(gateway::backups_in_object_storage),
    scenario!(gateway::a_hanging_webapp_delays_nothing),
    scenario!(gateway::another_instance_outside_the_cluster_stops_the_nodes),
    scenario!(upgrades::upgrade_never_runs_old_and_new_nodes_together),
    scenario!(upgrades::an_expired_build_under_manual_is_degraded_until_upgraded),
    scenario!(upgrades::upgrade_resumes_after_the_operator_is_killed, alone),
    scenario!(upgrades::an_upgrade_whose_schema_job_cannot_start_is_rolled_back),
    scenario!(upgrades::a_new_upgrade_waits_for_the_called_off_schema_job),
    scenario!(upgrades::a_first_deployment_waiting_for_a_node_says_why_and_takes_the_fix),
    scenario!(upgrades::a_first_deployment_never_runs_two_schema_jobs),
    scenario!(upgrades::a_number_deleted_during_its_first_schema_step_starts_nothing_older),
    scenario!(upgrades::a_failed_schema_job_waits_for_a_person),
    scenario!(upgrades::a_lost_status_keeps_the_running_version, alone),
    scenario!(upgrades::a_re_created_number_never_starts_an_older_build),
    scenario!(upgrades::a_number_deleted_during_its_schema_upgrade_starts_nothing_older),
    scenario!(upgrades::gateway_manual_upgrade_reaches_ready_at_the_new_version),
    scenario!(upgrades::gateway_auto_upgrades_an_expired_build),
    scenario!(scenarios::client_metrics_service_monitor_follows_the_spec),
    scenario!(scenarios::suspend_stops_in_the_safe_order_and_resumes),
    scenario!(scenarios::generated_keys_survive_reconciles),
    scenario!(scenarios::operator_killed_mid_reconcile_converges, alone),
    scenario!(scenarios::only_the_leader_writes, alone),
    scenario!(scenarios::a_leader_cut_off_from_the_api_stops_before_its_lease_can_pass, alone),
    scenario!(scenarios::unchanged_reconcile_writes_nothing, alone),
    scenario!(scenarios::kubectl_wait_never_passes_on_an_old_generation, alone),
    scenario!(scenarios::an_unreadable_object_does_not_stop_the_others, alone),
    scenario!(scenarios::namespace_scoped_rbac_is_enough, alone),
];

fn setup() -> Result<Env> {
    // Operator logs of an earlier run would be read as this run's.
    for entry in std::fs::read_dir(support::work_dir())?.flatten() {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.starts_with("operator-") && name.ends_with(".log") {
            std::fs::remove_file(entry.path())?;
        }
    }
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let cluster = Cluster::start()?;
    let (admin, operator_kubeconfig) = runtime.block_on(async {
        let admin = cluster.admin_client().await?;
        support::install_crd(&admin).await?;
        let sa = support::apply_chart_rbac(&cluster, RELEASE, OPERATOR_NAMESPACE, &["rbac.scope=cluster"])?;
        upgrades::write_catalog(&admin, upgrades::catalog_yaml(false)).await?;
        let kubeconfig = support::service_account_kubeconfig(&cluster, &admin, OPERATOR_NAMESPACE, &sa).await?;
        anyhow::Ok((admin, kubeconfig))
    })?;
    let mut gateway_slots = Vec::new();
    for scenario in GATEWAY_SCENARIOS {
        let port = support::free_port()?;
        gateway_slots.push((scenario, format!("gw-{scenario}-{}", std::process::id() % 10000), port));
    }
    let urls: Vec<String> =
        gateway_slots.iter().map(|(_, ns, port)| format!("{ns}/acme=https://127.0.0.1:{port}")).collect();
    let operator = Operator::start("main", &operator_kubeconfig, &["--webapp-url", &urls.join(",")])?;
    Ok(Env {
        cluster,
        admin,
        operator: Mutex::new(operator),
        operator_kubeconfig,
        gateway_slots,
        exclusive: RwLock::new(()),
        runtime,
    })
}

/// No scenario takes this long unless it hangs: a hang fails that scenario,
/// with what was running, instead of the whole run's time budget.
const SCENARIO_DEADLINE: Duration = Duration::from_secs(15 * 60);

fn run(name: &'static str, alone: bool, body: Scenario) -> Result<(), Failed> {
    let env = ENV.get().expect("environment set up");
    let _guard = if alone {
        (None, Some(env.exclusive.write().unwrap_or_else(|e| e.into_inner())))
    } else {
        (Some(env.exclusive.read().unwrap_or_else(|e| e.into_inner())), None)
    };
    // A scenario that stopped the shared operator must leave it running again;
    // one that ended by itself is reported, since that is a failure of its own.
    {
        let mut op = env.operator.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(status) = op.exited_by_itself() {
            eprintln!(
                "=== before {name}: the shared operator had exited by itself ({status}) ===\n{}\n{}",
                op.log_tail(),
                env.cluster.report()
            );
        }
        if !op.is_running() {
            op.restart().map_err(|e| Failed::from(format!("{name}: restarting the operator: {e:#}")))?;
        }
    }
    support::take_created_namespaces();
    support::take_faults();
    let outcome = env.runtime.block_on(async { tokio::time::timeout(SCENARIO_DEADLINE, body(env)).await });
    let faults = support::take_faults();
    if !faults.is_empty() {
        let survived = matches!(outcome, Ok(Ok(())));
        INJECTED.lock().unwrap_or_else(|e| e.into_inner()).push((name, faults, survived));
    }
    // Passed or failed, what the scenario created goes (unless the cluster is
    // kept for a look), so that a failure leaves nothing for the next ones.
    let created = support::take_created_namespaces();
    if std::env::var_os("WAO_IT_KEEP_CLUSTER").is_none() {
        env.runtime.block_on(async {
            for ns in &created {
                support::delete_namespace(&env.admin, ns).await;
            }
        });
    }
    let error = match outcome {
        Ok(Ok(())) => return Ok(()),
        Ok(Err(e)) => format!("{e:#}"),
        Err(_) => format!("did not finish within {SCENARIO_DEADLINE:?}"),
    };
    let mut op = env.operator.lock().unwrap_or_else(|e| e.into_inner());
    let exited = op.exited_by_itself();
    let mut report = format!(
        "{error}\n--- operator log (tail){} ---\n{}",
        exited.map(|s| format!(", exited by itself: {s}")).unwrap_or_default(),
        op.log_tail()
    );
    if exited.is_some() || !env.cluster.is_ready() {
        report = format!("{report}\n{}", env.cluster.report());
    }
    // Printed at once as well: a run cut short never reaches the summary.
    eprintln!("=== {name} FAILED ===\n{report}");
    Err(Failed::from(report))
}

/// The operators' log lines, in every scenario, that name a child the API
/// server does not return as the operator applied it.
fn children_written_at_every_reconcile() -> Vec<String> {
    let marker = whatsapp_operator::controller::drift::READ_BACK_DIFFERS;
    let Ok(entries) = std::fs::read_dir(support::work_dir()) else { return Vec::new() };
    let mut lines = Vec::new();
    for entry in entries.flatten() {
        let path = entry.path();
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or_default();
        if name.starts_with("operator-") && name.ends_with(".log") {
            let text = std::fs::read_to_string(&path).unwrap_or_default();
            lines.extend(text.lines().filter(|l| l.contains(marker)).map(|l| format!("{name}: {l}")));
        }
    }
    lines
}

fn main() {
    let args = Arguments::from_args();
    let trials: Vec<Trial> = SCENARIOS
        .iter()
        .map(|(name, alone, body)| {
            let (name, alone, body) = (*name, *alone, *body);
            Trial::test(name, move || run(name, alone, body))
        })
        .collect();

    if args.list {
        libtest_mimic::run(&args, trials).exit();
    }
    match setup() {
        Ok(env) => {
            let _ = ENV.set(env);
        }
        Err(e) => {
            eprintln!("integration environment failed to start: {e:#}");
            std::process::exit(1);
        }
    }
    let mut conclusion = libtest_mimic::run(&args, trials);
    eprintln!("{}", fault_report());
    // A child that does not read back as applied is written at every
    // reconcile, in whichever scenario's shape it has: any one fails the run.
    let rewritten = children_written_at_every_reconcile();
    if !rewritten.is_empty() {
        eprintln!("=== children that do not read back as applied ===\n{}", rewritten.join("\n"));
        conclusion.num_failed += 1;
    }
    let env = ENV.get().expect("environment");
    env.operator.lock().unwrap_or_else(|e| e.into_inner()).stop();
    if std::env::var_os("WAO_IT_KEEP_CLUSTER").is_none() {
        env.cluster.stop();
    }
    conclusion.exit();
}
