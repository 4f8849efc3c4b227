//! Upgrade scenarios: the procedure on the control plane (every pod watched),
//! resumed after kills, and with emulator processes at both versions.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, anyhow, bail, ensure};
use futures::StreamExt;
use jiff::ToSpan;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{ConfigMap, Pod};
use kube::api::{ListParams, ObjectMeta, Patch, PatchParams};
use kube::runtime::watcher;
use kube::{Api, Client, ResourceExt};
use serde_json::json;
use whatsapp_operator::api::WhatsAppNumber;

use crate::Env;
use crate::emulated::Deployment;
use crate::scenarios::{
    apply_example, apply_example_with, condition, merge_patch, ready_now, typed, unique_number, wait_condition,
    wait_ready, wans,
};
use crate::support::{self, OPERATOR_NAMESPACE, namespace, wait_until, work_dir};

pub const CATALOG_CONFIGMAP: &str = "whatsapp-operator-release-catalog";
const OLD: &str = "2.53.2";
const NEW: &str = "2.55.1";
/// The build the Auto scenario runs first and then sees expire.
const AUTO_OLD: &str = "2.51.3";
/// A build past its six months, whatever the catalog's other builds do.
const EXPIRED: &str = "2.49.1";
const UPGRADE_TIMEOUT: Duration = Duration::from_secs(180);

/// Release dates relative to today, so the real clock finds every build valid
/// but 2.49.1, and 2.51.3 once `expire_auto_old` marks it expired.
pub fn catalog_yaml(expire_auto_old: bool) -> String {
    let today = jiff::Zoned::now().with_time_zone(jiff::tz::TimeZone::UTC).date();
    let ago = |days: i64| today.checked_sub(days.days()).expect("a date").to_string();
    let auto_old_expiry = if expire_auto_old { format!(", expiresAt: \"{}\"", ago(1)) } else { String::new() };
    format!(
        "- {{version: \"{EXPIRED}\", releasedAt: \"{}\"}}\n- {{version: \"{AUTO_OLD}\", releasedAt: \"{}\"{auto_old_expiry}}}\n- {{version: \"{OLD}\", releasedAt: \"{}\"}}\n- {{version: \"{NEW}\", releasedAt: \"{}\"}}\n",
        ago(200),
        ago(140),
        ago(100),
        ago(10)
    )
}

/// Writes the release catalog ConfigMap the operator reads.
pub async fn write_catalog(c: &Client, yaml: String) -> Result<()> {
    let cm = ConfigMap {
        metadata: ObjectMeta { name: Some(CATALOG_CONFIGMAP.into()), ..Default::default() },
        data: Some(BTreeMap::from([("catalog.yaml".to_string(), yaml)])),
        ..Default::default()
    };
    Api::<ConfigMap>::namespaced(c.clone(), OPERATOR_NAMESPACE)
        .patch(CATALOG_CONFIGMAP, &PatchParams::apply("integration-tests").force(), &Patch::Apply(&cm))
        .await?;
    Ok(())
}

fn upgrade_step(w: &WhatsAppNumber) -> Option<String> {
    w.status.as_ref()?.upgrade.as_ref().map(|u| u.step.to_string())
}

/// `Stalled=True/DowngradeRefused` with `running` still the current version.
async fn wait_downgrade_refused(
    api: &Api<WhatsAppNumber>,
    name: &str,
    running: &str,
    timeout: Duration,
    what: &str,
) -> Result<()> {
    wait_until(timeout, what, || async {
        let w = api.get(name).await?;
        let stalled = w.status.as_ref().and_then(|s| s.conditions.iter().find(|c| c.type_ == "Stalled").cloned());
        Ok(stalled.is_some_and(|s| s.status == "True" && s.reason == "DowngradeRefused")
            && w.status.as_ref().and_then(|s| s.current_version.as_deref()) == Some(running))
    })
    .await
}

async fn wait_upgraded(api: &Api<WhatsAppNumber>, name: &str, to: &str) -> Result<WhatsAppNumber> {
    wait_until(UPGRADE_TIMEOUT, &format!("{name} to run {to} and be Ready"), || async {
        let w = api.get(name).await?;
        Ok(ready_now(&w)
            && w.status.as_ref().and_then(|s| s.current_version.as_deref()) == Some(to)
            && upgrade_step(&w).as_deref() == Some("Complete"))
    })
    .await
    .with_context(|| {
        format!("last status: {:?}", futures::executor::block_on(api.get(name)).ok().and_then(|w| w.status))
    })?;
    Ok(api.get(name).await?)
}

#[derive(Debug)]
enum Seen {
    Pod {
        uid: String,
        component: String,
        version: String,
        alive: bool,
    },
    /// The pod watch has listed what existed when it started.
    Listed,
    Job,
}

/// Records every pod and Job event in a namespace, in order.
fn record(c: &Client, ns: &str) -> (tokio::task::JoinHandle<()>, tokio::sync::mpsc::UnboundedReceiver<Seen>) {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let pods: Api<Pod> = Api::namespaced(c.clone(), ns);
    let jobs: Api<Job> = Api::namespaced(c.clone(), ns);
    let pod_tx = tx.clone();
    let pod_events = watcher(pods, watcher::Config::default()).for_each(move |e| {
        let seen = |p: &Pod, alive: bool| Seen::Pod {
            uid: p.uid().unwrap_or_default(),
            component: p.labels().get("app.kubernetes.io/component").cloned().unwrap_or_default(),
            version: p.labels().get("app.kubernetes.io/version").cloned().unwrap_or_default(),
            alive,
        };
        match e {
            Ok(watcher::Event::Apply(p)) | Ok(watcher::Event::InitApply(p)) => {
                let _ = pod_tx.send(seen(&p, true));
            }
            Ok(watcher::Event::Delete(p)) => {
                let _ = pod_tx.send(seen(&p, false));
            }
            Ok(watcher::Event::InitDone) => {
                let _ = pod_tx.send(Seen::Listed);
            }
            _ => {}
        }
        futures::future::ready(())
    });
    let job_events = watcher(jobs, watcher::Config::default()).for_each(move |e| {
        if let Ok(watcher::Event::Apply(_)) = e {
            let _ = tx.send(Seen::Job);
        }
        futures::future::ready(())
    });
    (
        tokio::spawn(async move {
            futures::join!(pod_events, job_events);
        }),
        rx,
    )
}

/// Replays the recorded events: old and new masters/coreapps never coexist,
/// the schema Job appears after the last old node pod went and before the
/// first new one came, and some webapp pod existed at every moment.
fn check_history(events: &[Seen], from: &str, to: &str) -> Result<()> {
    let mut live: HashMap<String, (String, String)> = HashMap::new();
    let (mut old_gone_at, mut job_at, mut new_at) = (None, None, None);
    let mut listed = false;
    for (i, e) in events.iter().enumerate() {
        match e {
            Seen::Listed => listed = true,
            Seen::Job => {
                job_at.get_or_insert(i);
            }
            Seen::Pod { uid, component, version, alive } => {
                if *alive {
                    live.insert(uid.clone(), (component.clone(), version.clone()));
                } else {
                    live.remove(uid);
                }
            }
        }
        if !listed {
            continue;
        }
        let nodes: Vec<&(String, String)> = live.values().filter(|(c, _)| c == "master" || c == "coreapp").collect();
        let old = nodes.iter().filter(|(_, v)| v == from).count();
        let new = nodes.iter().filter(|(_, v)| v == to).count();
        ensure!(old == 0 || new == 0, "event {i}: {old} node pods of {from} and {new} of {to} at once");
        if new > 0 {
            new_at.get_or_insert(i);
        }
        if old == 0 && new == 0 && old_gone_at.is_none() && job_at.is_none() {
            old_gone_at = Some(i);
        }
        let webapps = live.values().filter(|(c, _)| c == "webapp").count();
        ensure!(webapps > 0, "event {i}: no webapp pod");
    }
    let (gone, job, new) = (
        old_gone_at.ok_or_else(|| anyhow!("the old node pods never all went: {events:?}"))?,
        job_at.ok_or_else(|| anyhow!("no schema Job ran"))?,
        new_at.ok_or_else(|| anyhow!("no new node pod came"))?,
    );
    ensure!(gone < job && job < new, "order: old pods gone at event {gone}, Job at {job}, new pods at {new}");
    Ok(())
}

pub async fn upgrade_never_runs_old_and_new_nodes_together(env: &'static Env) -> Result<()> {
    let c = &env.admin;
    let ns = namespace(c, "upgrade").await?;
    let name = apply_example(c, &ns, "ha-mysql.yaml", None).await?;
    let api = wans(c, &ns);
    let w = wait_ready(&api, &name).await?;
    let build = w.status.as_ref().and_then(|s| s.build.clone()).ok_or_else(|| anyhow!("no build status"))?;
    ensure!(build.version == OLD && build.expires_at.is_some(), "the catalog ConfigMap dates the build: {build:?}");

    let (recorder, mut rx) = record(c, &ns);
    tokio::time::sleep(Duration::from_millis(500)).await;
    merge_patch(&api, &name, json!({"spec": {"version": NEW}})).await?;
    let w = wait_upgraded(&api, &name, NEW).await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    recorder.abort();
    let mut events = Vec::new();
    while let Ok(e) = rx.try_recv() {
        events.push(e);
    }
    check_history(&events, OLD, NEW)?;
    let u = w.status.as_ref().and_then(|s| s.upgrade.clone()).unwrap();
    ensure!((u.from.as_str(), u.to.as_str()) == (OLD, NEW));
    ensure!(w.status.as_ref().and_then(|s| s.target_version.as_deref()) == Some(NEW));
    ensure!(w.spec.version == NEW, "the spec is the user's");

    // Back to the old version: refused, the schema cannot go back.
    merge_patch(&api, &name, json!({"spec": {"version": OLD}})).await?;
    wait_downgrade_refused(&api, &name, NEW, Duration::from_secs(30), "the downgrade to be refused").await?;
    let sts = typed::<k8s_openapi::api::apps::v1::StatefulSet>(c, &ns).get(&format!("{name}-coreapp")).await?;
    let image = sts.spec.unwrap().template.spec.unwrap().containers[0].image.clone().unwrap_or_default();
    ensure!(image.ends_with(&format!(":v{NEW}")), "coreapps stay at {NEW}: {image}");
    support::delete_namespace(c, &ns).await;
    Ok(())
}

/// A number on an expired build under the `Manual` policy, health polling
/// off (nothing probes the fake nodes): `Degraded` says the build expired,
/// so the alert on it fires, until a person upgrades.
pub async fn an_expired_build_under_manual_is_degraded_until_upgraded(env: &'static Env) -> Result<()> {
    let c = &env.admin;
    let ns = namespace(c, "expired").await?;
    let spec = json!({"version": EXPIRED, "upgrade": {"policy": "Manual"}, "health": {"enabled": false}});
    let name = apply_example_with(c, &ns, "ha-mysql.yaml", None, &unique_number(), &spec).await?;
    let api = wans(c, &ns);
    // It runs: the upgrade below is one, not a first deployment's new version.
    let w = wait_ready(&api, &name).await?;
    ensure!(w.status.as_ref().and_then(|s| s.current_version.as_deref()) == Some(EXPIRED), "runs {EXPIRED}");
    let w = wait_condition(&api, &name, "Degraded", "True", "BuildExpired").await?;
    let expired = condition(&w, "BuildExpired").ok_or_else(|| anyhow!("no BuildExpired condition"))?;
    ensure!(expired.status == "True", "{expired:?}");
    ensure!(condition(&w, "Degraded").unwrap().message == expired.message, "Degraded tells why: {expired:?}");
    ensure!(w.status.as_ref().and_then(|s| s.upgrade.as_ref()).is_none(), "Manual: nothing upgrades by itself");

    merge_patch(&api, &name, json!({"spec": {"version": NEW}})).await?;
    let w = wait_upgraded(&api, &name, NEW).await?;
    let state = |type_| condition(&w, type_).map(|c| (c.status.clone(), c.reason.clone()));
    ensure!(state("BuildExpired").is_some_and(|(s, _)| s == "False"), "{:?}", condition(&w, "BuildExpired"));
    ensure!(state("Degraded").is_some_and(|(s, _)| s == "False"), "{:?}", condition(&w, "Degraded"));
    support::delete_namespace(c, &ns).await;
    Ok(())
}

pub async fn upgrade_resumes_after_the_operator_is_killed(env: &'static Env) -> Result<()> {
    let c = &env.admin;
    let ns = namespace(c, "resume").await?;
    let name = apply_example(c, &ns, "ha-mysql.yaml", None).await?;
    let api = wans(c, &ns);
    wait_ready(&api, &name).await?;
    let (recorder, mut rx) = record(c, &ns);
    tokio::time::sleep(Duration::from_millis(500)).await;
    // An extra old coreapp pod (as if one were slow to terminate) holds the
    // StoppingNodes step until the test deletes it.
    let pods: Api<Pod> = Api::namespaced(c.clone(), &ns);
    let held: Pod = serde_json::from_value(json!({
        "metadata": {"name": "slow-coreapp", "labels": {
            "app.kubernetes.io/name": "whatsapp-business-api", "app.kubernetes.io/instance": name,
            "app.kubernetes.io/managed-by": "whatsapp-operator", "app.kubernetes.io/component": "coreapp",
            "app.kubernetes.io/version": OLD}},
        "spec": {"nodeName": "kwok-node-0", "containers": [{"name": "coreapp", "image": "coreapp"}]}
    }))?;
    pods.create(&Default::default(), &held).await?;
    merge_patch(&api, &name, json!({"spec": {"version": NEW}})).await?;

    // Kill the operator (no chance to finish anything) in every step it is seen in.
    let mut killed_in: Vec<String> = Vec::new();
    let deadline = Instant::now() + UPGRADE_TIMEOUT;
    loop {
        ensure!(Instant::now() < deadline, "the upgrade did not finish; killed in {killed_in:?}");
        let w = api.get(&name).await?;
        match upgrade_step(&w) {
            Some(step) if step == "Complete" => break,
            Some(step) if !killed_in.contains(&step) => {
                {
                    let mut op = env.operator.lock().unwrap();
                    op.kill();
                    support::fault("the operator killed during an upgrade step");
                    op.restart()?;
                }
                if step == "StoppingNodes" {
                    // The restarted operator (its log is a new file) must
                    // still be waiting for the held pod once it has looked.
                    let reconciled = format!("reconciled name={name} namespace=Some(\"{ns}\")");
                    wait_until(UPGRADE_TIMEOUT, "the restarted operator to reconcile the number", || async {
                        Ok(env.operator_log().contains(&reconciled))
                    })
                    .await?;
                    let w = api.get(&name).await?;
                    ensure!(upgrade_step(&w).as_deref() == Some("StoppingNodes"), "moved on with an old pod alive");
                    pods.delete("slow-coreapp", &Default::default()).await?;
                }
                killed_in.push(step);
            }
            _ => {}
        }
        tokio::time::sleep(Duration::from_millis(40)).await;
    }
    wait_upgraded(&api, &name, NEW).await?;
    recorder.abort();
    let mut events = Vec::new();
    while let Ok(e) = rx.try_recv() {
        events.push(e);
    }
    check_history(&events, OLD, NEW)?;
    eprintln!("upgrade_resumes_after_the_operator_is_killed: killed during {killed_in:?}");
    ensure!(
        killed_in.first().map(String::as_str) == Some("StoppingNodes"),
        "killed while stopping nodes: {killed_in:?}"
    );
    ensure!(killed_in.len() >= 4, "the operator was killed in too few steps to prove much: {killed_in:?}");
    support::delete_namespace(c, &ns).await;
    Ok(())
}

/// Plays the kubelet for the emulated nodes during an upgrade: stops the old
/// nodes when the operator does, runs the schema upgrade and starts the new
/// nodes once the procedure gets there. Returns the gateway-down window.
async fn follow_upgrade(
    api: &Api<WhatsAppNumber>,
    deployment: &mut Deployment,
    to: &str,
    api_key: &str,
    port: u16,
    coreapps: usize,
) -> Result<Duration> {
    wait_until(UPGRADE_TIMEOUT, "the upgrade to stop the nodes", || async {
        let w = api.get("acme").await?;
        Ok(w.status.as_ref().and_then(|s| s.upgrade.as_ref()).is_some_and(|u| u.to == to))
    })
    .await?;
    let down_since = Instant::now();
    deployment.stop_all();
    wait_until(UPGRADE_TIMEOUT, "the procedure to start the new masters", || async {
        let step = upgrade_step(&api.get("acme").await?).unwrap_or_default();
        Ok(!matches!(step.as_str(), "StoppingNodes" | "UpgradingSchema"))
    })
    .await?;
    deployment.set_version(to);
    deployment.upgrade_schema()?;
    for _ in 0..2 {
        deployment.node(true)?;
    }
    for _ in 0..coreapps {
        deployment.node(false)?;
    }
    deployment.webapp(api_key, port)?;
    wait_until(UPGRADE_TIMEOUT, "the gateway to connect at the new version", || async {
        let w = api.get("acme").await?;
        Ok(w.status.as_ref().and_then(|s| s.health.as_ref()).is_some_and(|h| h.gateway == "connected")
            && w.status.as_ref().and_then(|s| s.target_version.as_deref()) == Some(to))
    })
    .await
    .with_context(|| deployment.logs())?;
    Ok(down_since.elapsed())
}

fn emulator_catalog(name: &str) -> Result<std::path::PathBuf> {
    let path = work_dir().join(format!("catalog-{name}.yaml"));
    std::fs::write(&path, catalog_yaml(false))?;
    Ok(path)
}

pub async fn gateway_manual_upgrade_reaches_ready_at_the_new_version(env: &'static Env) -> Result<()> {
    let c = &env.admin;
    let (ns, port) = env.slot("upgrade");
    let number = unique_number();
    crate::gateway::prepare(c, &ns, &number, json!({"version": OLD})).await?;
    let api = wans(c, &ns);
    let mut deployment = Deployment::start_with("upgrade", &number, OLD, (1, 4), Some(&emulator_catalog("upgrade")?))?;
    for master in [true, true, false, false] {
        deployment.node(master)?;
    }
    let key = crate::gateway::api_key(c, &ns).await?;
    deployment.webapp(&key, port)?;
    wait_ready(&api, "acme").await.with_context(|| deployment.logs())?;

    merge_patch(&api, "acme", json!({"spec": {"version": NEW}})).await?;
    let down = follow_upgrade(&api, &mut deployment, NEW, &key, port, 2).await?;
    let w = wait_upgraded(&api, "acme", NEW).await.with_context(|| deployment.logs())?;
    eprintln!(
        "gateway_manual_upgrade: the gateway was down for {:.1}s during the upgrade {OLD} -> {NEW}",
        down.as_secs_f64()
    );
    let health = w.status.as_ref().and_then(|s| s.health.clone()).unwrap_or_default();
    ensure!(health.connected_coreapps == 1 && health.primary_master.is_some(), "{health:?}");
    let events = typed::<k8s_openapi::api::events::v1::Event>(c, &ns).list(&Default::default()).await?;
    for reason in ["UpgradeStarted", "UpgradeCompleted"] {
        ensure!(events.items.iter().any(|e| e.reason.as_deref() == Some(reason)), "a {reason} event");
    }
    support::delete_namespace(c, &ns).await;
    Ok(())
}

pub async fn gateway_auto_upgrades_an_expired_build(env: &'static Env) -> Result<()> {
    let c = &env.admin;
    let (ns, port) = env.slot("auto");
    let number = unique_number();
    crate::gateway::prepare(c, &ns, &number, json!({"version": AUTO_OLD, "upgrade": {"policy": "Auto"}})).await?;
    let api = wans(c, &ns);
    let mut deployment = Deployment::start_with("auto", &number, AUTO_OLD, (1, 4), Some(&emulator_catalog("auto")?))?;
    for master in [true, true, false, false] {
        deployment.node(master)?;
    }
    let key = crate::gateway::api_key(c, &ns).await?;
    deployment.webapp(&key, port)?;
    let w = wait_ready(&api, "acme").await.with_context(|| deployment.logs())?;
    ensure!(w.status.as_ref().and_then(|s| s.current_version.as_deref()) == Some(AUTO_OLD));

    // Time passes: the catalog now says the running build has expired.
    write_catalog(c, catalog_yaml(true)).await?;
    let result = async {
        wait_until(Duration::from_secs(60), "BuildExpired and an automatic upgrade", || async {
            let w = api.get("acme").await?;
            let expired =
                w.status.as_ref().and_then(|s| s.conditions.iter().find(|c| c.type_ == "BuildExpired").cloned());
            Ok(expired.is_some_and(|e| e.status == "True")
                && w.status.as_ref().and_then(|s| s.upgrade.as_ref()).is_some_and(|u| u.to == NEW))
        })
        .await?;
        let down = follow_upgrade(&api, &mut deployment, NEW, &key, port, 2).await?;
        let w = wait_upgraded(&api, "acme", NEW).await.with_context(|| deployment.logs())?;
        eprintln!(
            "gateway_auto_upgrade: an expired {AUTO_OLD} was upgraded to {NEW}; gateway down {:.1}s",
            down.as_secs_f64()
        );
        ensure!(w.spec.version == AUTO_OLD, "Auto never rewrites the spec");
        ensure!(w.status.as_ref().and_then(|s| s.target_version.as_deref()) == Some(NEW));
        let expired = w.status.as_ref().and_then(|s| s.conditions.iter().find(|c| c.type_ == "BuildExpired").cloned());
        ensure!(expired.is_some_and(|e| e.status == "False"), "the new build is valid");
        anyhow::Ok(())
    }
    .await;
    write_catalog(c, catalog_yaml(false)).await?;
    result?;
    support::delete_namespace(c, &ns).await;
    Ok(())
}

/// Removes the status, as a restore without status or a re-created object
/// over running workloads leaves it, while the operator is stopped.
async fn lose_status(env: &'static Env, api: &Api<WhatsAppNumber>, name: &str, spec: serde_json::Value) -> Result<()> {
    env.operator.lock().unwrap().stop();
    let wiped = async {
        let mut w = api.get(name).await?;
        w.status = Some(Default::default());
        api.replace_status(name, &Default::default(), &w).await?;
        support::fault("the WhatsAppNumber's status wiped");
        let left = api.get(name).await?.status.unwrap_or_default();
        ensure!(left.current_version.is_none() && left.conditions.is_empty(), "the status is gone: {left:?}");
        merge_patch(api, name, spec).await?;
        anyhow::Ok(())
    }
    .await;
    env.operator.lock().unwrap().restart()?;
    wiped
}

pub async fn a_lost_status_keeps_the_running_version(env: &'static Env) -> Result<()> {
    let c = &env.admin;
    let ns = namespace(c, "lost-status").await?;
    let name = apply_example(c, &ns, "ha-mysql.yaml", None).await?;
    let api = wans(c, &ns);
    wait_ready(&api, &name).await?;

    // Status lost, then a new version: an upgrade from what runs, never a fresh install.
    lose_status(env, &api, &name, json!({"spec": {"version": NEW}})).await?;
    let w = wait_upgraded(&api, &name, NEW).await?;
    let u = w.status.as_ref().and_then(|s| s.upgrade.clone()).ok_or_else(|| anyhow!("no upgrade recorded"))?;
    ensure!((u.from.as_str(), u.to.as_str()) == (OLD, NEW), "upgraded through the procedure: {u:?}");

    // Status lost, then an older version: refused, the upgraded database keeps its build.
    lose_status(env, &api, &name, json!({"spec": {"version": OLD}})).await?;
    wait_downgrade_refused(&api, &name, NEW, Duration::from_secs(60), "the downgrade to be refused").await?;
    for tier in ["master", "coreapp"] {
        let sts = typed::<k8s_openapi::api::apps::v1::StatefulSet>(c, &ns).get(&format!("{name}-{tier}")).await?;
        let image = sts.spec.unwrap().template.spec.unwrap().containers[0].image.clone().unwrap_or_default();
        ensure!(image.ends_with(&format!(":v{NEW}")), "{tier}s stay at {NEW}: {image}");
    }
    support::delete_namespace(c, &ns).await;
    Ok(())
}

/// The media claim outlives a deleted WhatsAppNumber and records the schema
/// its databases hold: the same number re-created with an older version
/// (no status, no workloads) never starts that build on them.
pub async fn a_re_created_number_never_starts_an_older_build(env: &'static Env) -> Result<()> {
    let c = &env.admin;
    let ns = namespace(c, "re-created").await?;
    let name = apply_example(c, &ns, "ha-mysql.yaml", None).await?;
    let api = wans(c, &ns);
    wait_ready(&api, &name).await?;
    let claims = typed::<k8s_openapi::api::core::v1::PersistentVolumeClaim>(c, &ns);
    let recorded = |claim: &k8s_openapi::api::core::v1::PersistentVolumeClaim| {
        claim.annotations().get("whatsapp.operators.dev/schema-version").cloned()
    };
    let claim = claims.get(&format!("{name}-media")).await?;
    ensure!(recorded(&claim).as_deref() == Some(OLD), "the first schema is recorded: {:?}", claim.annotations());
    let databases = claim.annotations().get("whatsapp.operators.dev/schema-databases").cloned().unwrap_or_default();
    ensure!(databases.starts_with("mysql.databases.svc:3306/wa"), "the record names its databases: {databases}");
    merge_patch(&api, &name, json!({"spec": {"version": NEW}})).await?;
    let upgraded = wait_upgraded(&api, &name, NEW).await?;
    wait_until(Duration::from_secs(30), "the claim to record the upgraded schema", || async {
        Ok(recorded(&claims.get(&format!("{name}-media")).await?).as_deref() == Some(NEW))
    })
    .await?;

    // Deleted (the media claim is retained), then re-created at the old version.
    api.delete(&name, &Default::default()).await?;
    support::fault("a WhatsAppNumber deleted and re-created over upgraded databases");
    wait_until(Duration::from_secs(120), "the WhatsAppNumber to be gone", || async {
        Ok(api.get_opt(&name).await?.is_none())
    })
    .await?;
    ensure!(claims.get_opt(&format!("{name}-media")).await?.is_some(), "the media claim is retained");
    let mut again = WhatsAppNumber::new(&name, upgraded.spec.clone());
    again.metadata.namespace = Some(ns.clone());
    again.spec.version = OLD.into();
    api.create(&Default::default(), &again).await?;
    wait_downgrade_refused(&api, &name, NEW, Duration::from_secs(90), "the older build to be refused").await?;
    let jobs: Api<Job> = Api::namespaced(c.clone(), &ns);
    let old_job = format!("{name}-schema-{}", OLD.replace('.', "-"));
    ensure!(jobs.get_opt(&old_job).await?.is_none(), "no schema Job of the older build");
    for tier in ["master", "coreapp"] {
        let sts = typed::<k8s_openapi::api::apps::v1::StatefulSet>(c, &ns).get(&format!("{name}-{tier}")).await?;
        let image = sts.spec.unwrap().template.spec.unwrap().containers[0].image.clone().unwrap_or_default();
        ensure!(image.ends_with(&format!(":v{NEW}")), "{tier}s run the recorded {NEW}, never {OLD}: {image}");
    }
    support::delete_namespace(c, &ns).await;
    Ok(())
}

/// A first deployment whose schema Job's pod finds no node says so, with
/// the scheduler's reason; once the node selector is fixed the Job, which
/// never started, is made anew from the spec, and the number starts.
pub async fn a_first_deployment_waiting_for_a_node_says_why_and_takes_the_fix(env: &'static Env) -> Result<()> {
    let c = &env.admin;
    let ns = namespace(c, "unscheduled").await?;
    let nowhere = json!({"whatsapp.operators.dev/test-nowhere": "true"});
    let spec = json!({"coreapp": {"nodeSelector": nowhere}});
    let name = apply_example_with(c, &ns, "ha-mysql.yaml", None, &unique_number(), &spec).await?;
    let api = wans(c, &ns);
    let waited = wait_until(UPGRADE_TIMEOUT, "the first schema Job to say it waits for a node", || async {
        let w = api.get(&name).await?;
        Ok(condition(&w, "Ready").is_some_and(|r| {
            r.reason == "InitializingDatabase"
                && r.message.contains("not scheduled")
                && r.message.contains("nodes are available")
        }))
    })
    .await;
    let w = api.get(&name).await?;
    waited.with_context(|| format!("Ready: {:?}", condition(&w, "Ready")))?;
    let progressing = condition(&w, "Progressing").ok_or_else(|| anyhow!("no Progressing"))?;
    ensure!(progressing.status == "True", "nothing failed yet: {progressing:?}");
    let sets = typed::<k8s_openapi::api::apps::v1::StatefulSet>(c, &ns).list(&ListParams::default()).await?.items;
    ensure!(sets.is_empty(), "no node starts before the schema: {} StatefulSets", sets.len());

    let jobs: Api<Job> = Api::namespaced(c.clone(), &ns);
    let job_name = format!("{name}-schema-{}", OLD.replace('.', "-"));
    let stuck = jobs.get(&job_name).await?.uid();

    merge_patch(&api, &name, json!({"spec": {"coreapp": {"nodeSelector": null}}})).await?;
    wait_ready(&api, &name).await?;
    let made = jobs.get_opt(&job_name).await?.and_then(|j| j.uid());
    ensure!(made.is_some() && made != stuck, "the Job was made anew: {stuck:?} -> {made:?}");
    support::delete_namespace(c, &ns).await;
    Ok(())
}

pub async fn an_upgrade_whose_schema_job_cannot_start_is_rolled_back(env: &'static Env) -> Result<()> {
    let c = &env.admin;
    let ns = namespace(c, "rollback").await?;
    let name = apply_example(c, &ns, "ha-mysql.yaml", None).await?;
    let api = wans(c, &ns);
    wait_ready(&api, &name).await?;

    // No node matches: the schema Job's pod is never scheduled, so nothing runs.
    let nowhere = json!({"whatsapp.operators.dev/test-nowhere": "true"});
    merge_patch(&api, &name, json!({"spec": {"version": NEW, "coreapp": {"nodeSelector": nowhere}}})).await?;
    support::fault("a schema upgrade Job whose pod cannot start");
    let job_name = format!("{name}-schema-{}", NEW.replace('.', "-"));
    let jobs: Api<Job> = Api::namespaced(c.clone(), &ns);
    wait_until(UPGRADE_TIMEOUT, "the schema upgrade Job to wait for a node", || async {
        let w = api.get(&name).await?;
        let waiting = w.status.as_ref().and_then(|s| s.upgrade.as_ref()).is_some_and(|u| {
            u.step == whatsapp_operator::api::UpgradeStep::UpgradingSchema && u.message.contains("not scheduled")
        });
        Ok(waiting && jobs.get_opt(&job_name).await?.is_some())
    })
    .await?;
    let media = format!("{name}-media");
    ensure!(
        schema_upgrade_recorded(c, &ns, &media).await?.as_deref() == Some(NEW),
        "the upgrade's schema Job is recorded on the media claim once it is made"
    );

    // Its pod is held as if stuck Terminating on a node that no longer
    // answers: the Job's deletion waits for it, and so do the old nodes.
    let pods = typed::<Pod>(c, &ns);
    let selector = format!("batch.kubernetes.io/job-name={job_name}");
    let schema_pod = pods
        .list(&kube::api::ListParams::default().labels(&selector))
        .await?
        .items
        .into_iter()
        .next()
        .ok_or_else(|| anyhow!("no pod of {job_name}"))?
        .name_any();
    let hold = json!({"metadata": {"finalizers": ["whatsapp.operators.dev/test-hold"]}});
    pods.patch(&schema_pod, &PatchParams::default(), &Patch::Merge(&hold)).await?;

    // Set back: the old version runs again once the Job and its pod are gone.
    merge_patch(&api, &name, json!({"spec": {"version": OLD, "coreapp": {"nodeSelector": null}}})).await?;
    wait_until(UPGRADE_TIMEOUT, "the upgrade called off", || async {
        let w = api.get(&name).await?;
        let step = w.status.as_ref().and_then(|s| s.upgrade.as_ref()).map(|u| u.step);
        Ok(step == Some(whatsapp_operator::api::UpgradeStep::RolledBack))
    })
    .await?;
    wait_until(Duration::from_secs(30), "the record of the called-off schema Job to go", || async {
        Ok(schema_upgrade_recorded(c, &ns, &media).await?.is_none())
    })
    .await?;
    let replicas = |tier: &'static str| {
        let statefulsets = typed::<k8s_openapi::api::apps::v1::StatefulSet>(c, &ns);
        let name = format!("{name}-{tier}");
        async move { anyhow::Ok(statefulsets.get(&name).await?.spec.and_then(|s| s.replicas).unwrap_or(0)) }
    };
    for _ in 0..10 {
        tokio::time::sleep(Duration::from_secs(1)).await;
        ensure!(pods.get_opt(&schema_pod).await?.is_some(), "the held pod is there");
        for tier in ["master", "coreapp"] {
            ensure!(replicas(tier).await? == 0, "the {tier}s started while the schema pod of {NEW} was there");
        }
    }
    let release = json!({"metadata": {"finalizers": null}});
    pods.patch(&schema_pod, &PatchParams::default(), &Patch::Merge(&release)).await?;
    let w = wait_ready(&api, &name).await?;
    let u = w.status.as_ref().and_then(|s| s.upgrade.clone()).ok_or_else(|| anyhow!("no upgrade recorded"))?;
    ensure!(u.step == whatsapp_operator::api::UpgradeStep::RolledBack, "rolled back: {u:?}");
    ensure!(w.status.as_ref().and_then(|s| s.current_version.as_deref()) == Some(OLD));
    wait_until(Duration::from_secs(30), "the schema Job to go", || async {
        Ok(jobs.get_opt(&job_name).await?.is_none())
    })
    .await?;
    for tier in ["master", "coreapp"] {
        let sts = typed::<k8s_openapi::api::apps::v1::StatefulSet>(c, &ns).get(&format!("{name}-{tier}")).await?;
        let image = sts.spec.unwrap().template.spec.unwrap().containers[0].image.clone().unwrap_or_default();
        ensure!(image.ends_with(&format!(":v{OLD}")), "{tier}s back at {OLD}: {image}");
    }
    let events = typed::<k8s_openapi::api::events::v1::Event>(c, &ns).list(&Default::default()).await?;
    ensure!(
        events.items.iter().any(|e| e.reason.as_deref() == Some("UpgradeRolledBack")),
        "an UpgradeRolledBack event is recorded"
    );
    support::delete_namespace(c, &ns).await;
    Ok(())
}

/// The record of an upgrade's schema Job on the media claim (see
/// `ANNOTATION_SCHEMA_UPGRADE`).
async fn schema_upgrade_recorded(c: &Client, ns: &str, claim: &str) -> Result<Option<String>> {
    let claim = typed::<k8s_openapi::api::core::v1::PersistentVolumeClaim>(c, ns).get(claim).await?;
    Ok(claim.annotations().get(whatsapp_operator::resources::names::ANNOTATION_SCHEMA_UPGRADE).cloned())
}

/// Deletes `name` during a schema step to NEW, and waits until it, the
/// Job and every pod of it are gone (the media claim stays: `Retain`).
async fn delete_during_schema_step(c: &Client, ns: &str, name: &str) -> Result<()> {
    let api = wans(c, ns);
    let jobs: Api<Job> = Api::namespaced(c.clone(), ns);
    let pods = typed::<Pod>(c, ns);
    let job = format!("{name}-schema-{}", NEW.replace('.', "-"));
    let instance = format!("app.kubernetes.io/instance={name}");
    api.delete(name, &Default::default()).await?;
    wait_until(Duration::from_secs(120), "the WhatsAppNumber, its schema Job and its pods to be gone", || async {
        Ok(api.get_opt(name).await?.is_none()
            && jobs.get_opt(&job).await?.is_none()
            && pods.list(&ListParams::default().labels(&instance)).await?.items.is_empty())
    })
    .await
}

/// `name`, re-created at OLD over databases whose schema Job to NEW was
/// recorded and not seen to finish: from its creation no StatefulSet asks
/// for a pod, no pod runs and no schema Job of OLD is made; it is `Stalled`
/// (`SchemaUpgradeUnfinished`) within 90 s, `Ready` says why, and nothing
/// runs for 5 s more.
async fn held_over_an_unfinished_schema(c: &Client, ns: &str, name: &str) -> Result<()> {
    let api = wans(c, ns);
    let jobs: Api<Job> = Api::namespaced(c.clone(), ns);
    let pods = typed::<Pod>(c, ns);
    let statefulsets = typed::<k8s_openapi::api::apps::v1::StatefulSet>(c, ns);
    let old_job = format!("{name}-schema-{}", OLD.replace('.', "-"));
    let instance = format!("app.kubernetes.io/instance={name}");
    let nothing_runs = || async {
        for sts in statefulsets.list(&ListParams::default()).await?.items {
            let replicas = sts.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
            ensure!(replicas == 0, "{} asks for {replicas} pods of {OLD} over the unfinished schema", sts.name_any());
        }
        let running = pods.list(&ListParams::default().labels(&instance)).await?;
        ensure!(
            running.items.is_empty(),
            "pods over the unfinished schema: {:?}",
            running.items.iter().map(|p| p.name_any()).collect::<Vec<_>>()
        );
        ensure!(jobs.get_opt(&old_job).await?.is_none(), "no schema Job of {OLD}");
        anyhow::Ok(())
    };
    let deadline = Instant::now() + Duration::from_secs(90);
    let held = loop {
        nothing_runs().await?;
        let w = api.get(name).await?;
        let stalled = condition(&w, "Stalled")
            .is_some_and(|c| c.status == "True" && c.reason == "SchemaUpgradeUnfinished")
            && w.status.as_ref().and_then(|s| s.observed_generation) == w.metadata.generation;
        if stalled {
            break w;
        }
        ensure!(Instant::now() < deadline, "not Stalled (SchemaUpgradeUnfinished) within 90 s: {:?}", w.status);
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let message = condition(&held, "Ready").map(|c| c.message.to_string()).unwrap_or_default();
    ensure!(message.contains(&format!("part-way to {NEW}")), "Ready says why: {message}");
    for _ in 0..5 {
        nothing_runs().await?;
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    Ok(())
}

/// A WhatsAppNumber deleted during its upgrade's schema step (the Job
/// stopped part-way, as far as anyone can tell) and re-created at the old
/// version: the media claim says a schema upgrade was begun, so nothing of
/// the old version starts (`Stalled`, `SchemaUpgradeUnfinished`) until the
/// spec names the new version, which runs the schema upgrade again.
pub async fn a_number_deleted_during_its_schema_upgrade_starts_nothing_older(env: &'static Env) -> Result<()> {
    let c = &env.admin;
    let ns = namespace(c, "schema-unfinished").await?;
    let name = apply_example(c, &ns, "ha-mysql.yaml", None).await?;
    let api = wans(c, &ns);
    let ready = wait_ready(&api, &name).await?;
    let job_of = |version: &str| format!("{name}-schema-{}", version.replace('.', "-"));
    let jobs: Api<Job> = Api::namespaced(c.clone(), &ns);
    let nowhere = json!({"whatsapp.operators.dev/test-nowhere": "true"});
    merge_patch(&api, &name, json!({"spec": {"version": NEW, "coreapp": {"nodeSelector": nowhere}}})).await?;
    wait_until(UPGRADE_TIMEOUT, "the upgrade's schema Job", || async {
        Ok(jobs.get_opt(&job_of(NEW)).await?.is_some())
    })
    .await?;
    let media = format!("{name}-media");
    ensure!(schema_upgrade_recorded(c, &ns, &media).await?.as_deref() == Some(NEW), "recorded with the Job");

    support::fault("a WhatsAppNumber deleted during its upgrade's schema step, then re-created at the old version");
    delete_during_schema_step(c, &ns, &name).await?;
    let mut again = WhatsAppNumber::new(&name, ready.spec.clone());
    again.metadata.namespace = Some(ns.clone());
    api.create(&Default::default(), &again).await?;
    // From its creation on: no master, coreapp or webapp pod, no schema Job.
    held_over_an_unfinished_schema(c, &ns, &name).await?;
    let statefulsets = typed::<k8s_openapi::api::apps::v1::StatefulSet>(c, &ns);
    ensure!(statefulsets.list(&ListParams::default()).await?.items.len() == 2, "both StatefulSets, at 0");

    // The version the schema upgrade was begun for: it runs again, and the
    // record goes once the schema is there.
    merge_patch(&api, &name, json!({"spec": {"version": NEW}})).await?;
    wait_upgraded(&api, &name, NEW).await?;
    wait_until(Duration::from_secs(30), "the record to go once the schema reached it", || async {
        Ok(schema_upgrade_recorded(c, &ns, &media).await?.is_none())
    })
    .await?;
    support::delete_namespace(c, &ns).await;
    Ok(())
}

/// An upgrade called off while its schema Job's pod is stuck, then another
/// one begun to a third version: the new schema Job is made only once the
/// called-off one's pod is gone, never beside it.
pub async fn a_new_upgrade_waits_for_the_called_off_schema_job(env: &'static Env) -> Result<()> {
    const THIRD: &str = "2.54.1";
    let c = &env.admin;
    let ns = namespace(c, "calledoff").await?;
    let name = apply_example(c, &ns, "ha-mysql.yaml", None).await?;
    let api = wans(c, &ns);
    wait_ready(&api, &name).await?;
    let job_of = |version: &str| format!("{name}-schema-{}", version.replace('.', "-"));
    let jobs: Api<Job> = Api::namespaced(c.clone(), &ns);

    // The upgrade's schema Job cannot start (no node matches), and its pod
    // is held as if stuck Terminating on a node that no longer answers.
    let nowhere = json!({"whatsapp.operators.dev/test-nowhere": "true"});
    merge_patch(&api, &name, json!({"spec": {"version": NEW, "coreapp": {"nodeSelector": nowhere}}})).await?;
    support::fault("an upgrade called off while its schema Job's pod is stuck");
    let pods = typed::<Pod>(c, &ns);
    let selector = format!("batch.kubernetes.io/job-name={}", job_of(NEW));
    wait_until(UPGRADE_TIMEOUT, "the schema Job's pod", || async {
        Ok(!pods.list(&ListParams::default().labels(&selector)).await?.items.is_empty())
    })
    .await?;
    let listed = pods.list(&ListParams::default().labels(&selector)).await?;
    let schema_pod = listed.items.into_iter().next().map(|p| p.name_any()).ok_or_else(|| anyhow!("no schema pod"))?;
    let hold = json!({"metadata": {"finalizers": ["whatsapp.operators.dev/test-hold"]}});
    pods.patch(&schema_pod, &PatchParams::default(), &Patch::Merge(&hold)).await?;
    merge_patch(&api, &name, json!({"spec": {"version": OLD, "coreapp": {"nodeSelector": null}}})).await?;
    wait_until(UPGRADE_TIMEOUT, "the upgrade called off", || async {
        let w = api.get(&name).await?;
        Ok(w.status.and_then(|s| s.upgrade).is_some_and(|u| u.step == whatsapp_operator::api::UpgradeStep::RolledBack))
    })
    .await?;

    // A third version: its upgrade begins, and its schema Job waits.
    merge_patch(&api, &name, json!({"spec": {"version": THIRD}})).await?;
    wait_until(UPGRADE_TIMEOUT, "the upgrade to the third version at its schema step", || async {
        let w = api.get(&name).await?;
        Ok(w.status
            .and_then(|s| s.upgrade)
            .is_some_and(|u| u.to == THIRD && u.step == whatsapp_operator::api::UpgradeStep::UpgradingSchema))
    })
    .await?;
    // The step says what its Job waits for: the called-off Job (its
    // deletion waits for the held pod), or that pod.
    let waits_for = [format!("waiting for Job {} of", job_of(NEW)), format!("waiting for pod {schema_pod} of")];
    wait_until(UPGRADE_TIMEOUT, "the schema step to name what its Job waits for", || async {
        let w = api.get(&name).await?;
        let message = w.status.and_then(|s| s.upgrade).map(|u| u.message).unwrap_or_default();
        Ok(waits_for.iter().any(|w| message.starts_with(w)))
    })
    .await?;
    for _ in 0..10 {
        ensure!(pods.get_opt(&schema_pod).await?.is_some(), "the held pod is there");
        ensure!(
            jobs.get_opt(&job_of(THIRD)).await?.is_none(),
            "the schema Job of {THIRD} was made while the pod of {NEW}'s was there"
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let release = json!({"metadata": {"finalizers": null}});
    pods.patch(&schema_pod, &PatchParams::default(), &Patch::Merge(&release)).await?;
    wait_until(UPGRADE_TIMEOUT, "the schema Job of the third version", || async {
        Ok(jobs.get_opt(&job_of(THIRD)).await?.is_some())
    })
    .await?;
    ensure!(jobs.get_opt(&job_of(NEW)).await?.is_none(), "the called-off Job is gone first");
    support::delete_namespace(c, &ns).await;
    Ok(())
}

/// A first deployment whose spec.version changes before its schema Job ran
/// (to an older version, a mistyped one put right, and to a newer one): that
/// Job, which never started, goes before the new version's starts, its
/// record on the media claim goes with it, and the number comes up at the
/// new version.
pub async fn a_first_deployment_never_runs_two_schema_jobs(env: &'static Env) -> Result<()> {
    first_deployment_changes_version(env, "firstjobs-down", NEW, OLD).await?;
    first_deployment_changes_version(env, "firstjobs-up", OLD, NEW).await
}

async fn first_deployment_changes_version(env: &'static Env, prefix: &str, from: &str, to: &str) -> Result<()> {
    let c = &env.admin;
    let ns = namespace(c, prefix).await?;
    // No node matches: the first schema Job's pod is never scheduled.
    let nowhere =
        json!({"version": from, "coreapp": {"nodeSelector": {"whatsapp.operators.dev/test-nowhere": "true"}}});
    let name = apply_example_with(c, &ns, "ha-mysql.yaml", None, &unique_number(), &nowhere).await?;
    let api = wans(c, &ns);
    let jobs: Api<Job> = Api::namespaced(c.clone(), &ns);
    let job_of = |version: &str| format!("{name}-schema-{}", version.replace('.', "-"));
    // The Job first made, and the one of the version put right.
    let (old_job, new_job) = (job_of(from), job_of(to));
    wait_until(UPGRADE_TIMEOUT, "the first schema Job to wait for a node", || async {
        Ok(jobs.get_opt(&old_job).await?.is_some())
    })
    .await?;
    let media = format!("{name}-media");
    ensure!(schema_upgrade_recorded(c, &ns, &media).await?.as_deref() == Some(from), "recorded with the claim");

    // Every Job event of the namespace, in the order the API server made them:
    // the Jobs that exist after each one are known exactly, however brief.
    let mut events = watcher(jobs.clone(), watcher::Config::default()).boxed();
    let mut existing = std::collections::BTreeSet::new();
    loop {
        match events.next().await {
            Some(Ok(watcher::Event::InitApply(j))) => {
                existing.insert(j.name_any());
            }
            Some(Ok(watcher::Event::InitDone)) => break,
            Some(Ok(_)) => {}
            Some(Err(e)) => return Err(e.into()),
            None => bail!("the Job watch ended"),
        }
    }
    ensure!(existing.contains(&old_job) && !existing.contains(&new_job), "only the first Job: {existing:?}");

    // The version is changed (a mistyped or unpullable one, say), the node selector put right.
    merge_patch(&api, &name, json!({"spec": {"version": to, "coreapp": {"nodeSelector": null}}})).await?;
    let replay = async {
        while let Some(event) = events.next().await {
            match event? {
                watcher::Event::Apply(j) => {
                    existing.insert(j.name_any());
                }
                watcher::Event::Delete(j) => {
                    existing.remove(&j.name_any());
                }
                // The watch started over: the state is not known exactly.
                watcher::Event::Init | watcher::Event::InitApply(_) | watcher::Event::InitDone => {
                    bail!("the Job watch was restarted")
                }
            }
            ensure!(
                !(existing.contains(&old_job) && existing.contains(&new_job)),
                "the Job of {to} was created while the Job of {from} was still there"
            );
            if !existing.contains(&old_job) && existing.contains(&new_job) {
                return Ok(());
            }
        }
        bail!("the Job watch ended")
    };
    tokio::time::timeout(UPGRADE_TIMEOUT, replay)
        .await
        .map_err(|_| anyhow!("the earlier Job never went, or the new one never came"))??;
    // The record of the Job that never started went with it: nothing holds
    // the older version.
    let w = wait_ready(&api, &name).await?;
    ensure!(w.status.as_ref().and_then(|s| s.current_version.as_deref()) == Some(to), "runs {to}");
    ensure!(w.status.as_ref().and_then(|s| s.upgrade.as_ref()).is_none(), "a first deployment, no upgrade");
    wait_until(Duration::from_secs(30), "the record to go once the schema reached it", || async {
        Ok(schema_upgrade_recorded(c, &ns, &media).await?.is_none())
    })
    .await?;
    support::delete_namespace(c, &ns).await;
    Ok(())
}

/// A WhatsAppNumber deleted during its first deployment's schema step (the
/// Job stopped, maybe part-way) and re-created at an older version: the
/// media claim, made with the record of that Job, keeps the older version's
/// schema Job and nodes from starting until the spec names the recorded
/// version, whose first schema Job then runs again.
pub async fn a_number_deleted_during_its_first_schema_step_starts_nothing_older(env: &'static Env) -> Result<()> {
    let c = &env.admin;
    let ns = namespace(c, "first-unfinished").await?;
    let nowhere = json!({"version": NEW, "coreapp": {"nodeSelector": {"whatsapp.operators.dev/test-nowhere": "true"}}});
    let name = apply_example_with(c, &ns, "ha-mysql.yaml", None, &unique_number(), &nowhere).await?;
    let api = wans(c, &ns);
    let jobs: Api<Job> = Api::namespaced(c.clone(), &ns);
    let job_of = |version: &str| format!("{name}-schema-{}", version.replace('.', "-"));
    wait_until(UPGRADE_TIMEOUT, "the first schema Job", || async { Ok(jobs.get_opt(&job_of(NEW)).await?.is_some()) })
        .await?;
    let media = format!("{name}-media");
    ensure!(schema_upgrade_recorded(c, &ns, &media).await?.as_deref() == Some(NEW), "recorded with the claim");
    let spec = api.get(&name).await?.spec;

    support::fault("a WhatsAppNumber deleted during its first schema step, then re-created at an older version");
    delete_during_schema_step(c, &ns, &name).await?;
    let mut older = spec.clone();
    older.version = OLD.into();
    older.coreapp.node_selector = Default::default();
    let mut again = WhatsAppNumber::new(&name, older);
    again.metadata.namespace = Some(ns.clone());
    api.create(&Default::default(), &again).await?;
    held_over_an_unfinished_schema(c, &ns, &name).await?;

    // The recorded version: its first schema Job runs again, and the
    // record goes once the schema is there.
    merge_patch(&api, &name, json!({"spec": {"version": NEW}})).await?;
    let w = wait_ready(&api, &name).await?;
    ensure!(w.status.as_ref().and_then(|s| s.current_version.as_deref()) == Some(NEW), "runs {NEW}");
    wait_until(Duration::from_secs(30), "the record to go once the schema reached it", || async {
        Ok(schema_upgrade_recorded(c, &ns, &media).await?.is_none())
    })
    .await?;
    support::delete_namespace(c, &ns).await;
    Ok(())
}

/// A first deployment whose schema Job fails: the Job stays (Kubernetes
/// would remove it a day later, which the operator would take for a person's
/// request to run it again) until a person deletes it, and the number comes
/// up once they have.
pub async fn a_failed_schema_job_waits_for_a_person(env: &'static Env) -> Result<()> {
    let c = &env.admin;
    let ns = namespace(c, "failedjob").await?;
    // No node matches, and the shortest deadline: the Job fails past it.
    let nowhere = json!({
        "coreapp": {"nodeSelector": {"whatsapp.operators.dev/test-nowhere": "true"}},
        "upgrade": {"schemaUpgradeDeadlineSeconds": 60}
    });
    let name = apply_example_with(c, &ns, "ha-mysql.yaml", None, &unique_number(), &nowhere).await?;
    let api = wans(c, &ns);
    let jobs: Api<Job> = Api::namespaced(c.clone(), &ns);
    let job_name = format!("{name}-schema-{}", OLD.replace('.', "-"));

    // An attempt fails as a real node reports it: the container ran, exited
    // 1, and its log's tail is its termination message. The status says why
    // while the Job tries again.
    let pods: Api<Pod> = Api::namespaced(c.clone(), &ns);
    let selector = format!("batch.kubernetes.io/job-name={job_name}");
    wait_until(UPGRADE_TIMEOUT, "the schema Job's pod", || async {
        Ok(!pods.list(&ListParams::default().labels(&selector)).await?.items.is_empty())
    })
    .await?;
    let first = pods.list(&ListParams::default().labels(&selector)).await?.items.remove(0);
    let refused = "connect to the database server: Access denied for user 'wa'@'10.0.0.5' (using password: YES)";
    let now = jiff::Timestamp::now().to_string();
    let failed = json!({"status": {"phase": "Failed", "containerStatuses": [{
        "name": "schema-upgrade", "image": format!("docker.whatsapp.biz/coreapp:v{OLD}"), "imageID": "",
        "ready": false, "restartCount": 0,
        "state": {"terminated": {"exitCode": 1, "reason": "Error", "startedAt": now, "finishedAt": now,
            "message": format!("starting the schema upgrade\nERROR {refused}\n")}}
    }]}});
    support::fault("a first schema Job's attempt failing on the database's credentials");
    pods.patch_status(&first.name_any(), &PatchParams::default(), &Patch::Merge(&failed)).await?;
    let told = || async {
        let w = api.get(&name).await?;
        Ok::<_, anyhow::Error>(
            condition(&w, "Ready")
                .filter(|c| c.reason == "InitializingDatabase" && c.message.contains(refused))
                .map(|c| c.message.to_string()),
        )
    };
    wait_until(UPGRADE_TIMEOUT, "InitializingDatabase naming the failed attempt", || async {
        Ok(told().await?.is_some())
    })
    .await?;
    let told = told().await?.unwrap_or_default();
    ensure!(told.contains("1 attempt failed with exit code 1") && told.contains("tries again"), "{told}");

    support::fault("a first schema Job past its deadline");
    wait_until(UPGRADE_TIMEOUT, "the schema Job failed and kept", || async {
        let w = api.get(&name).await?;
        let stuck = crate::scenarios::condition(&w, "Stalled")
            .is_some_and(|c| c.status == "True" && c.reason == "SchemaJobFailed");
        let job = jobs.get_opt(&job_name).await?;
        let kept = job.as_ref().and_then(|j| j.spec.as_ref()).is_some_and(|s| s.ttl_seconds_after_finished.is_none());
        Ok(stuck && kept)
    })
    .await?;
    let w = api.get(&name).await?;
    let message = crate::scenarios::condition(&w, "Stalled").map(|c| c.message.to_string()).unwrap_or_default();
    ensure!(message.contains("delete the Job"), "the condition says what to do: {message}");
    ensure!(message.contains(refused), "the condition names the last attempt's failure: {message}");

    // Put right: the operator does not delete the failed Job itself (it may
    // have changed the databases); a person does.
    merge_patch(&api, &name, json!({"spec": {"coreapp": {"nodeSelector": null}}})).await?;
    for _ in 0..5 {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let job = jobs.get_opt(&job_name).await?.ok_or_else(|| anyhow!("the failed Job was removed"))?;
        ensure!(job.metadata.deletion_timestamp.is_none(), "the failed Job is being deleted");
    }
    jobs.delete(&job_name, &kube::api::DeleteParams::background()).await?;
    let w = wait_ready(&api, &name).await?;
    ensure!(w.status.as_ref().and_then(|s| s.current_version.as_deref()) == Some(OLD), "runs {OLD}");
    let job = jobs.get_opt(&job_name).await?.ok_or_else(|| anyhow!("the Job that ran again is gone"))?;
    ensure!(job.spec.and_then(|s| s.ttl_seconds_after_finished).is_some(), "a Job that succeeded expires");
    support::delete_namespace(c, &ns).await;
    Ok(())
}
