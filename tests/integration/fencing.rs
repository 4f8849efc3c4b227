//! Fencing: no master or coreapp of a number starts while a pod of another
//! instance of that number exists, whatever happened to the claim.
//!
//! Fake nodes delete pods at once, so a pod that outlives its StatefulSet
//! (as on a node that no longer answers) is made by hand: it carries the
//! labels of a coreapp, is never scheduled, and a finalizer keeps it
//! Terminating until the test lets it go.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{Result, ensure};
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Container, Pod, PodSpec};
use kube::api::{DeleteParams, ListParams, ObjectMeta, Patch, PatchParams, PostParams};
use kube::{Api, Client};
use serde_json::json;
use whatsapp_operator::exclusivity::lease_name;
use whatsapp_operator::resources::names::number_digits;

use crate::Env;
use crate::scenarios::{
    apply_example, apply_example_for, condition, duplicate, ready_now, typed, unique_number, wait_condition,
    wait_ready, wans,
};
use crate::support::{self, OPERATOR_NAMESPACE, namespace, wait_until};

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
        let lease = Api::<Lease>::namespaced(c.clone(), OPERATOR_NAMESPACE).get_opt(&lease_name(&number)).await?;
        let held_by_holder = lease
            .and_then(|l| l.spec?.holder_identity)
            .is_some_and(|h| h.starts_with(&format!("{holder_ns}/{holder}/")));
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
    let lease = Api::<Lease>::namespaced(c.clone(), OPERATOR_NAMESPACE).get(&lease_name(&number)).await?;
    let identity = lease.spec.and_then(|s| s.holder_identity).unwrap_or_default();
    ensure!(identity.starts_with(&format!("{waiter_ns}/waiter/")), "the claim moved to the waiter: {identity}");
    support::delete_namespace(c, &holder_ns).await;
    support::delete_namespace(c, &waiter_ns).await;
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

    // A person deletes the claim Lease: both objects are woken by it.
    let leases = Api::<Lease>::namespaced(c.clone(), OPERATOR_NAMESPACE);
    leases.delete(&lease_name(&number), &DeleteParams::default()).await?;
    let held_by_holder = || async {
        let lease = leases.get_opt(&lease_name(&number)).await?;
        Ok(lease
            .and_then(|l| l.spec?.holder_identity)
            .is_some_and(|h| h.starts_with(&format!("{holder_ns}/{holder}/"))))
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
