//! Fencing: no master or coreapp of a number starts while a pod of another
//! instance of that number exists, whatever happened to the claim.
//!
//! Fake nodes delete pods at once, so a pod that outlives its StatefulSet
//! (as on a node that no longer answers) is made by hand: it carries the
//! labels of a coreapp, is never scheduled, and a finalizer keeps it
//! Terminating until the test lets it go.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{Context as _, Result, ensure};
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Container, Pod, PodSpec};
use kube::api::{DeleteParams, ListParams, ObjectMeta, Patch, PatchParams, PostParams};
use kube::{Api, Client};
use serde_json::json;
use whatsapp_operator::api::claim_name;
use whatsapp_operator::resources::names::number_digits;

use crate::Env;
use crate::scenarios::{
    apply_example, apply_example_for, apply_example_with, condition, duplicate, ready_now, typed, unique_number,
    wait_condition, wait_ready, wans,
};
use crate::support::{self, OPERATOR_NAMESPACE, Operator, namespace, wait_until};

const HOLD: &str = "e2e.whatsapp.operators.dev/hold";

/// A pod labelled as a node of `number` belonging to the WhatsAppNumber
/// `instance`, never scheduled, optionally held by a finalizer.
async fn node_pod(c: &Client, ns: &str, name: &str, instance: &str, number: &str, held: bool) -> Result<()> {
    let pod = Pod {
        metadata: ObjectMeta {
            name: Some(name.into()),
            labels: Some(BTreeMap::from([
                ("app.kubernetes.io/managed-by".to_string(), "whatsapp-operator".to_string()),
                ("app.kubernetes.io/component".to_string(), "coreapp".to_string()),
                ("app.kubernetes.io/instance".to_string(), instance.to_string()),
                ("whatsapp.operators.dev/number".to_string(), number_digits(number)),
            ])),
            finalizers: held.then(|| vec![HOLD.to_string()]),
            ..Default::default()
        },
        spec: Some(PodSpec {
            // No scheduler answers to this name: the pod stays Pending, off every node.
            scheduler_name: Some("nobody".into()),
            containers: vec![Container {
                name: "coreapp".into(),
                image: Some("coreapp:stuck".into()),
                ..Default::default()
            }],
            ..Default::default()
        }),
        ..Default::default()
    };
    typed::<Pod>(c, ns).create(&PostParams::default(), &pod).await?;
    Ok(())
}

async fn release_pod(c: &Client, ns: &str, name: &str) -> Result<()> {
    let patch = json!({"metadata": {"finalizers": null}});
    typed::<Pod>(c, ns).patch(name, &PatchParams::default(), &Patch::Merge(&patch)).await?;
    Ok(())
}

async fn statefulsets(c: &Client, ns: &str) -> Result<usize> {
    Ok(typed::<StatefulSet>(c, ns).list(&ListParams::default()).await?.items.len())
}

/// Checks `holds` again and again for `window`: a property that must stay
/// true, not a duration being measured.
async fn holds_throughout<F, Fut>(window: Duration, what: &str, mut holds: F) -> Result<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<bool>>,
{
    let end = tokio::time::Instant::now() + window;
    while tokio::time::Instant::now() < end {
        ensure!(holds().await?, "{what}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    Ok(())
}

pub async fn deletion_waits_for_the_holders_pods(env: &'static Env) -> Result<()> {
    let c = &env.admin;
    let holder_ns = namespace(c, "fence-holder").await?;
    let waiter_ns = namespace(c, "fence-waiter").await?;
    let holder = apply_example(c, &holder_ns, "ha-mysql.yaml", None).await?;
    let number = wans(c, &holder_ns).get(&holder).await?.spec.phone_number;
    wait_ready(&wans(c, &holder_ns), &holder).await?;
    // A coreapp of the holder that will not go away on its own.
    node_pod(c, &holder_ns, "stuck-coreapp", &holder, &number, true).await?;
    support::fault("a coreapp pod stuck Terminating");
    duplicate(c, &holder_ns, &holder, &waiter_ns, "waiter").await?;
    wait_condition(&wans(c, &waiter_ns), "waiter", "Conflict", "True", "PhoneNumberInUse").await?;

    wans(c, &holder_ns).delete(&holder, &DeleteParams::default()).await?;
    let stopping = wait_condition(&wans(c, &holder_ns), &holder, "Ready", "False", "Deleting").await?;
    let message = &condition(&stopping, "Ready").unwrap().message;
    ensure!(message.contains(&format!("{holder_ns}/stuck-coreapp")), "the pod waited for is named: {message}");
    wait_until(Duration::from_secs(30), "the holder's StatefulSets to go", || async {
        Ok(statefulsets(c, &holder_ns).await? == 0)
    })
    .await?;
    wait_until(Duration::from_secs(30), "the waiter to name the pod it waits for", || async {
        let w = wans(c, &waiter_ns).get("waiter").await?;
        Ok(condition(&w, "Conflict").is_some_and(|c| c.message.contains("stuck-coreapp")))
    })
    .await?;
    holds_throughout(Duration::from_secs(8), "the waiter starts nothing while the holder's pod exists", || async {
        let held_by_holder =
            support::claim_holder(c, &number).await?.is_some_and(|h| h.starts_with(&format!("{holder_ns}/{holder}/")));
        Ok(held_by_holder && statefulsets(c, &waiter_ns).await? == 0)
    })
    .await?;

    // Asked to stop, the pod is Terminating: still nothing starts.
    typed::<Pod>(c, &holder_ns).delete("stuck-coreapp", &DeleteParams::default()).await?;
    wait_until(Duration::from_secs(30), "the holder to report the pod Terminating", || async {
        let w = wans(c, &holder_ns).get(&holder).await?;
        Ok(condition(&w, "Ready").is_some_and(|c| c.message.contains("Terminating for")))
    })
    .await?;
    ensure!(statefulsets(c, &waiter_ns).await? == 0, "nothing starts while a pod is Terminating");

    // Gone at last: the holder is deleted and the waiter takes over by itself.
    release_pod(c, &holder_ns, "stuck-coreapp").await?;
    wait_ready(&wans(c, &waiter_ns), "waiter").await?;
    ensure!(wans(c, &holder_ns).get_opt(&holder).await?.is_none(), "the holder is gone");
    let identity = support::claim_holder(c, &number).await?.unwrap_or_default();
    ensure!(identity.starts_with(&format!("{waiter_ns}/waiter/")), "the claim moved to the waiter: {identity}");
    support::delete_namespace(c, &holder_ns).await;
    support::delete_namespace(c, &waiter_ns).await;
    Ok(())
}

/// A WhatsAppNumber deleted while its first schema Job's pod may still run:
/// the Job is deleted, and the number stays claimed (the object waits,
/// naming the pod) until the pod is gone, so that an object re-created for
/// the number never runs its schema Job beside this one.
pub async fn deletion_stops_the_schema_upgrade_before_releasing_the_number(env: &'static Env) -> Result<()> {
    let c = &env.admin;
    let ns = namespace(c, "fence-schema").await?;
    let number = unique_number();
    // No node matches: the schema Job's pod stays Pending, unfinished.
    let nowhere = json!({"coreapp": {"nodeSelector": {"whatsapp.operators.dev/test-nowhere": "true"}}});
    let name = apply_example_with(c, &ns, "ha-mysql.yaml", None, &number, &nowhere).await?;
    let pods = typed::<Pod>(c, &ns);
    let selector = "app.kubernetes.io/component=schema-upgrade";
    wait_until(Duration::from_secs(60), "the schema Job's pod", || async {
        Ok(!pods.list(&ListParams::default().labels(selector)).await?.items.is_empty())
    })
    .await?;
    let pod = pods.list(&ListParams::default().labels(selector)).await?.items[0].metadata.name.clone();
    let pod = pod.context("the pod's name")?;
    // Its kubelet would take a while to stop it: a finalizer stands in.
    let hold = json!({"metadata": {"finalizers": [HOLD]}});
    pods.patch(&pod, &PatchParams::default(), &Patch::Merge(&hold)).await?;
    support::fault("a schema Job's pod slow to stop");

    wans(c, &ns).delete(&name, &DeleteParams::default()).await?;
    let stopping = wait_condition(&wans(c, &ns), &name, "Ready", "False", "Deleting").await?;
    let message = &condition(&stopping, "Ready").unwrap().message;
    ensure!(message.contains(&format!("{ns}/{pod}")), "the schema pod waited for is named: {message}");
    let jobs = typed::<k8s_openapi::api::batch::v1::Job>(c, &ns);
    wait_until(Duration::from_secs(30), "the schema Job deleted", || async {
        let job = jobs.list(&ListParams::default().labels(selector)).await?.items;
        Ok(job.iter().all(|j| j.metadata.deletion_timestamp.is_some()))
    })
    .await?;
    holds_throughout(Duration::from_secs(5), "the number stays claimed while the schema pod exists", || async {
        let held = support::claim_holder(c, &number).await?.is_some_and(|h| h.starts_with(&format!("{ns}/{name}/")));
        Ok(held && wans(c, &ns).get_opt(&name).await?.is_some())
    })
    .await?;

    release_pod(c, &ns, &pod).await?;
    wait_until(Duration::from_secs(60), "the object gone, the number released", || async {
        Ok(wans(c, &ns).get_opt(&name).await?.is_none() && support::claim_holder(c, &number).await?.is_none())
    })
    .await?;
    support::delete_namespace(c, &ns).await;
    Ok(())
}

/// The finalizer of a WhatsAppNumber removed by hand while one of its pods
/// is stuck Terminating, and the object created again under the same name:
/// the old pod carries the new object's namespace and instance label, yet it
/// is an earlier object's, and nothing starts beside it.
pub async fn a_re_created_object_waits_for_the_earlier_ones_pods(env: &'static Env) -> Result<()> {
    let c = &env.admin;
    let ns = namespace(c, "fence-recreated").await?;
    let number = unique_number();
    let name = apply_example_for(c, &ns, "ha-mysql.yaml", None, &number).await?;
    wait_ready(&wans(c, &ns), &name).await?;
    node_pod(c, &ns, &format!("{name}-coreapp-9"), &name, &number, true).await?;
    support::fault("a coreapp pod stuck Terminating");
    wans(c, &ns).delete(&name, &DeleteParams::default()).await?;
    typed::<Pod>(c, &ns).delete(&format!("{name}-coreapp-9"), &DeleteParams::default()).await?;
    wait_until(Duration::from_secs(30), "the object to wait for its stuck pod", || async {
        let w = wans(c, &ns).get(&name).await?;
        Ok(condition(&w, "Ready").is_some_and(|c| c.message.contains("Terminating for")))
    })
    .await?;
    // A person removes the finalizer instead of the pod.
    let unblock = json!({"metadata": {"finalizers": null}});
    wans(c, &ns).patch(&name, &PatchParams::default(), &Patch::Merge(&unblock)).await?;
    support::fault("the WhatsAppNumber's finalizer removed by hand");
    wait_until(Duration::from_secs(30), "the object and its StatefulSets gone", || async {
        Ok(wans(c, &ns).get_opt(&name).await?.is_none() && statefulsets(c, &ns).await? == 0)
    })
    .await?;

    // GitOps applies it again: same namespace, name and number.
    apply_example_for(c, &ns, "ha-mysql.yaml", Some("WhatsAppNumber"), &number).await?;
    let fenced = wait_condition(&wans(c, &ns), &name, "Ready", "False", "PreviousInstanceRunning")
        .await
        .context("the new object must wait for the earlier one's pod")?;
    let message = condition(&fenced, "Ready").map(|c| c.message.to_string()).unwrap_or_default();
    ensure!(message.contains(&format!("{name}-coreapp-9")), "the pod waited for is named: {message}");
    holds_throughout(Duration::from_secs(5), "no master or coreapp starts beside the stuck pod", || async {
        Ok(statefulsets(c, &ns).await? == 0)
    })
    .await?;

    release_pod(c, &ns, &format!("{name}-coreapp-9")).await?;
    wait_ready(&wans(c, &ns), &name).await?;
    support::delete_namespace(c, &ns).await;
    Ok(())
}

pub async fn a_stray_node_pod_keeps_a_number_from_starting(env: &'static Env) -> Result<()> {
    let c = &env.admin;
    let stray_ns = namespace(c, "fence-stray").await?;
    let ns = namespace(c, "fence-new").await?;
    let number = unique_number();
    // A coreapp of the number that no WhatsAppNumber here runs (another
    // installation, or one made by hand).
    node_pod(c, &stray_ns, "elsewhere-coreapp-0", "elsewhere", &number, false).await?;
    support::fault("a coreapp pod of the number that no WhatsAppNumber runs");
    let name = apply_example_for(c, &ns, "ha-mysql.yaml", None, &number).await?;

    let fenced = wait_condition(&wans(c, &ns), &name, "Ready", "False", "PreviousInstanceRunning").await?;
    let stalled = condition(&fenced, "Stalled").unwrap();
    ensure!(stalled.status == "True", "a pod nobody stops needs a person: {stalled:?}");
    ensure!(stalled.message.contains(&format!("{stray_ns}/elsewhere-coreapp-0")), "{}", stalled.message);
    ensure!(condition(&fenced, "Conflict").is_some_and(|c| c.status == "True"));
    holds_throughout(Duration::from_secs(5), "no master or coreapp is created", || async {
        Ok(statefulsets(c, &ns).await? == 0)
    })
    .await?;

    typed::<Pod>(c, &stray_ns).delete("elsewhere-coreapp-0", &DeleteParams::default()).await?;
    let ready = wait_ready(&wans(c, &ns), &name).await?;
    ensure!(condition(&ready, "Stalled").is_some_and(|c| c.status == "False"));
    support::delete_namespace(c, &stray_ns).await;
    support::delete_namespace(c, &ns).await;
    Ok(())
}

pub async fn a_deleted_claim_stays_with_the_running_instance(env: &'static Env) -> Result<()> {
    let c = &env.admin;
    let holder_ns = namespace(c, "lost-claim").await?;
    let waiter_ns = namespace(c, "lost-claim-waiter").await?;
    let holder = apply_example(c, &holder_ns, "ha-mysql.yaml", None).await?;
    let number = wans(c, &holder_ns).get(&holder).await?.spec.phone_number;
    wait_ready(&wans(c, &holder_ns), &holder).await?;
    duplicate(c, &holder_ns, &holder, &waiter_ns, "waiter").await?;
    wait_condition(&wans(c, &waiter_ns), "waiter", "Conflict", "True", "PhoneNumberInUse").await?;

    // A person deletes the claim: both objects are woken by it.
    support::number_claims(c).delete(&claim_name(&number), &DeleteParams::default()).await?;
    support::fault("the number claim deleted by hand");
    let held_by_holder = || async {
        Ok(support::claim_holder(c, &number).await?.is_some_and(|h| h.starts_with(&format!("{holder_ns}/{holder}/"))))
    };
    wait_until(Duration::from_secs(30), "the running instance to claim the number again", held_by_holder).await?;
    holds_throughout(Duration::from_secs(8), "the running instance keeps the number", || async {
        let holder_ready = ready_now(&wans(c, &holder_ns).get(&holder).await?);
        Ok(held_by_holder().await? && holder_ready && statefulsets(c, &waiter_ns).await? == 0)
    })
    .await?;
    let waiter = wans(c, &waiter_ns).get("waiter").await?;
    ensure!(condition(&waiter, "Conflict").is_some_and(|c| c.status == "True"), "the waiter still waits");
    support::delete_namespace(c, &holder_ns).await;
    support::delete_namespace(c, &waiter_ns).await;
    Ok(())
}

/// Claims hold across installations. A second, cluster-scoped installation
/// in a namespace of its own honours the claim the first one granted, and
/// leaves alone the objects the first one manages (it writes nothing for
/// them and says so in a metric). A claim Lease an earlier release left
/// counts until its holder holds the claim object, and then goes.
pub async fn claims_hold_across_installations(env: &'static Env) -> Result<()> {
    let c = &env.admin;
    let holder_ns = namespace(c, "install-a").await?;
    let other_ns = namespace(c, "install-b").await?;
    let second_ns = namespace(c, "wao-second").await?;
    let holder = apply_example(c, &holder_ns, "ha-mysql.yaml", None).await?;
    let number = wans(c, &holder_ns).get(&holder).await?.spec.phone_number;
    wait_ready(&wans(c, &holder_ns), &holder).await?;
    let claim = support::number_claims(c).get(&claim_name(&number)).await?;
    ensure!(claim.spec.installation == OPERATOR_NAMESPACE, "granted by the main installation: {:?}", claim.spec);

    // Only the second installation acts while it runs.
    let sa = support::apply_chart_rbac(&env.cluster, "wao-second", &second_ns, &["rbac.scope=cluster"])?;
    let kubeconfig = support::service_account_kubeconfig(&env.cluster, c, &second_ns, &sa).await?;
    env.operator.lock().unwrap_or_else(|e| e.into_inner()).stop();
    let mut second = Operator::start(
        "second",
        &kubeconfig,
        &["--operator-namespace", &second_ns, "--lease-name", "whatsapp-operator-second"],
    )?;
    let result = async {
        let before = wans(c, &holder_ns).get(&holder).await?.metadata.resource_version;
        duplicate(c, &holder_ns, &holder, &other_ns, "other").await?;
        let w = wait_condition(&wans(c, &other_ns), "other", "Conflict", "True", "PhoneNumberInUse").await?;
        let message = condition(&w, "Conflict").map(|c| c.message.to_string()).unwrap_or_default();
        ensure!(message.contains(&format!("{holder_ns}/{holder}")), "the holder is named: {message}");
        holds_throughout(Duration::from_secs(6), "the second installation starts nothing", || async {
            let held =
                support::claim_holder(c, &number).await?.is_some_and(|h| h.starts_with(&format!("{holder_ns}/")));
            Ok(held && statefulsets(c, &other_ns).await? == 0)
        })
        .await?;
        // The holder is the first installation's: the second one writes nothing for it.
        let metrics = format!("http://127.0.0.1:{}/metrics", second.metrics_port);
        wait_until(Duration::from_secs(30), "the second installation to report the number managed elsewhere", || {
            let metrics = metrics.clone();
            let (ns, name) = (holder_ns.clone(), holder.clone());
            async move {
                let text = reqwest::get(metrics).await?.text().await?;
                Ok(text.lines().any(|l| {
                    l.starts_with("whatsapp_operator_number_managed_elsewhere{")
                        && l.contains(&format!("namespace=\"{ns}\""))
                        && l.contains(&format!("name=\"{name}\""))
                        && l.ends_with(" 1")
                }))
            }
        })
        .await?;
        let after = wans(c, &holder_ns).get(&holder).await?.metadata.resource_version;
        ensure!(before == after, "the second installation wrote the first one's object");
        let log = std::fs::read_to_string(&second.log).unwrap_or_default();
        ensure!(log.contains("another installation of the operator"), "the log says why");
        Ok(())
    }
    .await;
    let tail = second.log_tail();
    second.stop();
    env.operator.lock().unwrap_or_else(|e| e.into_inner()).restart()?;
    result.with_context(|| format!("second installation's log:\n{tail}"))?;

    // A claim Lease of an earlier release, held by an existing object.
    let legacy_ns = namespace(c, "install-legacy").await?;
    let legacy_number = unique_number();
    let legacy_name = claim_name(&legacy_number);
    let holder_uid = wans(c, &holder_ns).get(&holder).await?.metadata.uid.unwrap_or_default();
    let leases = Api::<Lease>::namespaced(c.clone(), OPERATOR_NAMESPACE);
    let lease: Lease = serde_json::from_value(json!({
        "metadata": {"name": legacy_name, "labels": {whatsapp_operator::controller::claim::LEGACY_CLAIM_LABEL: "true"},
            "annotations": {whatsapp_operator::controller::claim::NUMBER_ANNOTATION: legacy_number}},
        "spec": {"holderIdentity": format!("{holder_ns}/{holder}/{holder_uid}")}
    }))?;
    leases.create(&PostParams::default(), &lease).await?;
    let late = apply_example_for(c, &legacy_ns, "ha-mysql.yaml", None, &legacy_number).await?;
    let w = wait_condition(&wans(c, &legacy_ns), &late, "Conflict", "True", "PhoneNumberInUse").await?;
    ensure!(condition(&w, "Conflict").is_some_and(|c| c.message.contains(&format!("{holder_ns}/{holder}"))));
    ensure!(support::claim_holder(c, &legacy_number).await?.is_none(), "no claim object beside the Lease");
    ensure!(statefulsets(c, &legacy_ns).await? == 0, "nothing starts while the Lease holds the number");
    // Handed to the waiting object (as a release of the old holder would).
    let late_uid = wans(c, &legacy_ns).get(&late).await?.metadata.uid.unwrap_or_default();
    let patch = json!({"spec": {"holderIdentity": format!("{legacy_ns}/{late}/{late_uid}")}});
    leases.patch(&legacy_name, &PatchParams::default(), &Patch::Merge(&patch)).await?;
    wait_ready(&wans(c, &legacy_ns), &late).await?;
    let moved = support::claim_holder(c, &legacy_number).await?.unwrap_or_default();
    ensure!(moved.starts_with(&format!("{legacy_ns}/{late}/")), "the claim object names the new holder: {moved}");
    wait_until(Duration::from_secs(30), "the legacy Lease removed", || async {
        Ok(leases.get_opt(&legacy_name).await?.is_none())
    })
    .await?;
    for ns in [&holder_ns, &other_ns, &legacy_ns, &second_ns] {
        support::delete_namespace(c, ns).await;
    }
    Ok(())
}
