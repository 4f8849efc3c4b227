//! A claimed, valid number is deployed in steps, each reading what the one
//! before produced: plan (pure but for cache reads: what runs, the upgrade
//! plan, the workloads' shape), apply (keys, children, the schema Job, or
//! its removal when an upgrade is called off), observe (the gateway's
//! health; the upgrade's pods and Job, from the caches), advance (pure: the
//! upgrade's next step, the build's expiry) and the shards (the one write to
//! the client, when the shard plan asks for it); their results make the
//! status.

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{Pod, Secret};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::api::{DeleteParams, Patch, PatchParams};
use kube::{Api, ResourceExt};
use tracing::{info, warn};

use super::apply::Applier;
use super::error::{Error, Result};
use super::status::{self, Applied, Tiers};
use super::{Context, fencing, fetch, gateway, lifecycle, plan, validate};
use crate::api::{ShardingStatus, WhatsAppNumber};
use crate::resources::names::Names;
use crate::resources::{BuildInputs, media};
use crate::sharding;
use crate::upgrade::{self, procedure};

pub(super) async fn deploy(
    wan: &WhatsAppNumber,
    ctx: &Context,
    observed: &fetch::Observed,
    inputs: BuildInputs,
) -> Result<Applied> {
    let planned = plan_step(wan, ctx, observed).await?;
    let written = apply_step(wan, ctx, observed, inputs, &planned).await?;
    let gateway = observe_step(wan, ctx, observed, &planned, &written).await?;
    let progress = observe_upgrade(wan, ctx, &planned, &written, &gateway).await?;
    let versions = advance(wan, &observed.catalog, &planned, progress.as_ref());
    log_advance(planned.plan.upgrade.as_ref(), versions.upgrade.as_ref());
    if began_verifying(planned.plan.upgrade.as_ref(), versions.upgrade.as_ref()) {
        // The result at hand may come from a probe begun before the webapps
        // rolled: only one begun from now on can verify the new version.
        ctx.probes.refresh(&gateway::number_key(wan));
    }
    let sharding = shards_step(wan, ctx, observed, &planned, &written, &gateway).await;
    Ok(Applied {
        client: client_state(wan, observed, &planned, &written, &gateway),
        tiers: written.tiers,
        health: gateway.health,
        sharding,
        versions,
    })
}

/// What runs and what is to run.
struct Planned {
    now: Timestamp,
    plan: upgrade::Plan,
    workloads: plan::Workloads,
    /// The running version, from status or else the live workloads.
    recorded_or_live: Option<String>,
    /// The schema Job of the upgrade in progress, as it was at the start.
    upgrade_job: procedure::JobState,
    /// A first deployment's schema Jobs: which may start, which go first.
    first_jobs: Option<plan::FirstJobs>,
    /// Schema Jobs that failed and would be removed a while after: kept
    /// instead, since deleting one is how a person says to run it again.
    keep_failed: Vec<FailedJob>,
    /// Another schema Job of this object (or a pod of one) that the
    /// upgrade's schema Job waits for.
    schema_job_held_for: Option<String>,
    /// A first deployment's record of a schema Job that never started, of
    /// an earlier spec.version, to remove: the writer it names.
    first_called_off: Option<String>,
    /// The media claim as the API server had it, when the cache's was
    /// doubted: the claim is built from it.
    media_claim_now: Option<Option<k8s_openapi::api::core::v1::PersistentVolumeClaim>>,
}

/// A failed schema Job to keep.
#[derive(Clone, Debug, PartialEq, Eq)]
struct FailedJob {
    version: String,
    /// The Job's uid: a Job of the same name made since is not this one.
    uid: String,
}

async fn plan_step(wan: &WhatsAppNumber, ctx: &Context, observed: &fetch::Observed) -> Result<Planned> {
    let status = wan.status.as_ref();
    let now = Timestamp::now();
    // What runs: status, the live workloads and the schema Job of an upgrade
    // under way (whether it can still be called off).
    // Only a claim the operator manages carries its record.
    let managed_claim = observed.media_claim.as_ref().filter(|_| wan.spec.media.existing_claim.is_none());
    let mut live_version = plan::live_evidence(wan, live_version(ctx, wan).await?.as_deref(), managed_claim);
    // Nothing says a version ran: the schema Jobs this object keeps say
    // which schema the databases hold (a succeeded Job's version), and which
    // Jobs are still about (an earlier spec.version's).
    let first_deployment = live_version.is_none() && status.and_then(|s| s.current_version.as_ref()).is_none();
    let mut schema_jobs = if first_deployment { own_schema_jobs(ctx, wan).await? } else { vec![] };
    // About to create the spec's Job, or to delete or wait for another: what
    // the API server has, not what the cache had a moment ago (a Job just
    // created may not be in it yet, a pod seen pending may have started).
    let others = schema_jobs.iter().any(|j| j.version != wan.spec.version);
    let replaced = schema_jobs.iter().any(|j| j.version == wan.spec.version && outdated_never_started(wan, j));
    if first_deployment && (others || replaced || schema_jobs.is_empty()) {
        schema_jobs = own_schema_jobs_now(ctx, wan).await?;
    }
    for job in schema_jobs.iter().filter(|j| j.state == procedure::JobState::Succeeded) {
        live_version = upgrade::running_version(live_version.as_deref(), Some(&job.version));
    }
    let failed = |state: &procedure::JobState| matches!(state, procedure::JobState::Failed { .. });
    let mut keep_failed: Vec<FailedJob> = schema_jobs
        .iter()
        .filter(|j| j.expires && !j.deleting && failed(&j.state))
        .map(|j| FailedJob { version: j.version.clone(), uid: j.uid.clone() })
        .collect();
    let job = match status.and_then(|s| s.upgrade.as_ref()) {
        Some(u) if u.step == procedure::Step::UpgradingSchema => {
            let job = schema_job_state(ctx, wan, &u.to).await?;
            if failed(&job)
                && let Some(uid) = expiring_schema_job(ctx, wan, &u.to).await?
            {
                keep_failed.push(FailedJob { version: u.to.clone(), uid });
            }
            job
        }
        _ => procedure::JobState::Absent,
    };
    let databases = crate::api::database_identity(&wan.spec);
    let recorded_upgrade = managed_claim.and_then(|c| media::schema_upgrade_of(c, &databases));
    let mut running = upgrade::Running { live_version, job, schema_upgrade: recorded_upgrade };
    if !observed.catalog.problems.is_empty() {
        warn!(problems = ?observed.catalog.problems, "release catalog entries were skipped");
    }
    let mut plan = upgrade::plan(&wan.spec.upgrade, &wan.spec.version, status, &running, &observed.catalog, now);
    if let Some(u) = plan.upgrade.as_ref().filter(|_| plan.rolled_back) {
        // Calling off deletes the schema Job, which is safe only if it never
        // started: decided on the Job and its pods as the API server has them
        // now, not as the caches had them a moment ago.
        running.job = schema_job_state_now(ctx, wan, &u.to).await?;
        plan = upgrade::plan(&wan.spec.upgrade, &wan.spec.version, status, &running, &observed.catalog, now);
    }
    if wan.spec.suspend {
        plan.hold_while_suspended();
    }
    // A first deployment's own record of a Job of an earlier spec.version
    // that never started goes with that Job, and holds nothing meanwhile.
    let never_started: Vec<&str> =
        schema_jobs.iter().filter(|j| j.never_started()).map(|j| j.version.as_str()).collect();
    let first = plan::first_deployment_attempt(wan);
    let decide = |record: Option<&upgrade::SchemaUpgradeRecord>| {
        let called_off = record
            .filter(|r| {
                first_deployment && plan::first_record_called_off(r, &first, &plan.steady_version, &never_started)
            })
            .and_then(|r| r.began.clone());
        let unfinished = plan::unfinished_schema_upgrade(&plan, status, record.filter(|_| called_off.is_none()));
        (called_off, unfinished)
    };
    let (mut first_called_off, mut unfinished) = decide(running.schema_upgrade.as_ref());
    // Its own record holding a first deployment, with the recorded Job gone,
    // may be one taken back a moment ago that the cache still shows: the API
    // server says, and the claim is built from what it says (a stale record
    // is never applied back). A recorded Job still there decides by itself.
    let mut media_claim_now = None;
    let own_record = running.schema_upgrade.as_ref().is_some_and(|r| {
        r.began.as_deref() == Some(first.as_str())
            && !schema_jobs.iter().any(|j| upgrade::same_version(&j.version, &r.version))
    });
    if unfinished.is_some() && first_deployment && own_record {
        let claim = media_claim_now_of(ctx, wan).await?;
        running.schema_upgrade = claim.as_ref().and_then(|c| media::schema_upgrade_of(c, &databases));
        (first_called_off, unfinished) = decide(running.schema_upgrade.as_ref());
        media_claim_now = Some(claim);
    }
    if let Some(why) = &unfinished {
        info!(target = plan.target_version(), "{why}");
        plan.hold_for_unfinished_schema_upgrade(why.clone());
    }
    if let Some(u) = plan.upgrade.as_ref().filter(|_| plan.rolled_back) {
        // Called off: deleted, not kept.
        keep_failed.retain(|j| j.version != u.to);
    }
    if let Some(u) = plan.upgrade.as_ref().filter(|_| plan.began) {
        info!(from = %u.from, to = %u.to, "starting an upgrade");
    }
    let recorded_or_live = plan::running_version(wan, running.live_version.as_deref());
    // A first deployment creates the schema before anything else starts,
    // and never beside another version's schema Job.
    let (first_job, first_jobs) = match &recorded_or_live {
        Some(_) => (None, None),
        None => {
            let steady = &plan.steady_version;
            let own = schema_jobs.iter().find(|j| j.version == *steady).map(|j| j.state.clone());
            let own = own.unwrap_or(procedure::JobState::Absent);
            let others: Vec<_> = schema_jobs
                .iter()
                .filter(|j| j.version != *steady)
                .map(|j| (j.version.clone(), j.state.clone()))
                .collect();
            let outdated = schema_jobs.iter().any(|j| j.version == *steady && outdated_never_started(wan, j));
            let first = plan::first_jobs(wan, steady, &own, &others);
            let mut first = plan::replace_outdated(first, wan, steady, &own, outdated);
            // One delete each: the deletion waits for the Job's pods.
            first.delete.retain(|v| !schema_jobs.iter().any(|j| j.version == *v && j.deleting));
            (Some(own), Some(first))
        }
    };
    let mut workloads = plan::workloads(wan, &plan, first_job.as_ref());
    if first_jobs.as_ref().is_some_and(|f| !f.create) {
        workloads.shape.schema_job = false;
    }
    if let Some(u) = plan::called_off(&plan, status) {
        let left = schema_job_left(ctx, wan, &u.to).await?;
        plan::hold_nodes_after_rollback(&mut workloads, left);
    }
    if unfinished.is_some() {
        plan::hold_for_unfinished_schema_upgrade(&mut workloads);
    }
    // Looked for from the step before too, so that the step's message says
    // what the Job waits for from the moment the step begins.
    let schema_job_held_for = match plan.upgrade.as_ref() {
        Some(u) if matches!(u.step, procedure::Step::StoppingNodes | procedure::Step::UpgradingSchema) => {
            other_schema_job(ctx, wan, &u.to).await?
        }
        _ => None,
    };
    if let Some((u, other)) =
        plan.upgrade.as_ref().zip(schema_job_held_for.as_ref()).filter(|_| workloads.shape.schema_job)
    {
        info!(%other, to = %u.to, "the upgrade's schema Job waits for another schema Job of this object to be gone");
        workloads.shape.schema_job = false;
    }
    Ok(Planned {
        now,
        plan,
        workloads,
        recorded_or_live,
        upgrade_job: running.job,
        first_jobs,
        keep_failed,
        schema_job_held_for,
        first_called_off,
        media_claim_now,
    })
}

/// The media claim the operator manages, as the API server has it now
/// (listed by name: the operator lists and watches claims, it never gets one).
async fn media_claim_now_of(
    ctx: &Context,
    wan: &WhatsAppNumber,
) -> Result<Option<k8s_openapi::api::core::v1::PersistentVolumeClaim>> {
    let namespace = wan.namespace().unwrap_or_default();
    let name = crate::resources::media_claim_name(wan);
    let listed = Api::<k8s_openapi::api::core::v1::PersistentVolumeClaim>::namespaced(ctx.client.clone(), &namespace)
        .list(&kube::api::ListParams::default().fields(&format!("metadata.name={name}")))
        .await
        .map_err(Error::request(format!("reading the media claim {namespace}/{name}")))?;
    Ok(listed.items.into_iter().find(|c| c.metadata.name.as_deref() == Some(name.as_str())))
}

/// One of this object's schema Jobs.
#[derive(Clone, Debug)]
struct SchemaJob {
    version: String,
    state: procedure::JobState,
    /// Its deletion was asked for.
    deleting: bool,
    /// It is removed some time after it finished.
    expires: bool,
    uid: String,
    /// The applied-hash annotation: which desired form it was made from
    /// (none on a Job made by an operator that did not stamp it).
    applied_hash: Option<String>,
    /// The pods of it counted failed: one may have run and been removed since.
    failed_pods: bool,
}

impl SchemaJob {
    /// None of its pods started or failed.
    fn never_started(&self) -> bool {
        matches!(self.state, procedure::JobState::Pending(_) | procedure::JobState::Unstartable(_)) && !self.failed_pods
    }
}

/// A schema Job none of whose pods started or failed, made from another
/// desired form than the spec gives now.
fn outdated_never_started(wan: &WhatsAppNumber, job: &SchemaJob) -> bool {
    let desired = crate::resources::schema_job::schema_job(wan, &job.version);
    let wanted = desired.annotations().get(crate::resources::names::ANNOTATION_APPLIED_HASH);
    job.never_started() && job.applied_hash.as_ref() != wanted
}

/// Whether a pod of the Job was counted failed, or is being counted.
fn failed_pods(status: Option<&k8s_openapi::api::batch::v1::JobStatus>) -> bool {
    status.is_some_and(|s| {
        s.failed.unwrap_or(0) > 0
            || s.uncounted_terminated_pods.as_ref().is_some_and(|u| !u.failed.as_deref().unwrap_or_default().is_empty())
    })
}

/// [`own_schema_jobs`] as the API server has them now, with their pods.
async fn own_schema_jobs_now(ctx: &Context, wan: &WhatsAppNumber) -> Result<Vec<SchemaJob>> {
    use crate::resources::names::{LABEL_COMPONENT, LABEL_INSTANCE};
    let namespace = wan.namespace().unwrap_or_default();
    let what = || format!("reading the schema Jobs of {namespace}/{}", wan.name_any());
    let selector =
        format!("{LABEL_INSTANCE}={},{LABEL_COMPONENT}={}", wan.name_any(), crate::resources::schema_job::COMPONENT);
    let jobs = Api::<Job>::namespaced(ctx.client.clone(), &namespace)
        .list(&kube::api::ListParams::default().labels(&selector))
        .await
        .map_err(Error::request(what()))?;
    let uid = wan.uid().unwrap_or_default();
    let mut found = vec![];
    for job in jobs.items {
        let controlled = job.owner_references().iter().any(|r| r.controller == Some(true) && r.uid == uid);
        let name = job.name_any();
        let Some(version) = crate::resources::schema_job::version_of(wan, &name).filter(|_| controlled) else {
            continue;
        };
        let pods = Api::<Pod>::namespaced(ctx.client.clone(), &namespace)
            .list(&kube::api::ListParams::default().labels(&format!("{}={name}", crate::upgrade::job::JOB_NAME_LABEL)))
            .await
            .map_err(Error::request(what()))?;
        found.push(SchemaJob {
            version,
            state: upgrade::job::state(Some(&job), &pods.items),
            deleting: job.metadata.deletion_timestamp.is_some(),
            expires: job.spec.as_ref().is_some_and(|s| s.ttl_seconds_after_finished.is_some()),
            uid: job.metadata.uid.clone().unwrap_or_default(),
            applied_hash: job.annotations().get(crate::resources::names::ANNOTATION_APPLIED_HASH).cloned(),
            failed_pods: failed_pods(job.status.as_ref()),
        });
    }
    Ok(found)
}

/// The schema Jobs this object keeps, from the cache.
async fn own_schema_jobs(ctx: &Context, wan: &WhatsAppNumber) -> Result<Vec<SchemaJob>> {
    let namespace = wan.namespace().unwrap_or_default();
    let uid = wan.uid().unwrap_or_default();
    let jobs = ctx.caches.jobs.filter(|j| j.namespace() == namespace && j.controlled_by(&uid)).await?;
    let mut found = vec![];
    for job in jobs {
        let Some(version) = crate::resources::schema_job::version_of(wan, job.name()) else { continue };
        let state = schema_job_state(ctx, wan, &version).await?;
        found.push(SchemaJob {
            version,
            state,
            deleting: job.identity.deletion.is_some(),
            expires: job.expires(),
            uid: job.identity.uid.to_string(),
            applied_hash: job.applied_hash.as_ref().map(ToString::to_string),
            failed_pods: failed_pods(job.state.status.as_ref()),
        });
    }
    Ok(found)
}

/// The uid of the schema Job of `version` if it is there, not being
/// deleted, and removed a while after it finishes.
async fn expiring_schema_job(ctx: &Context, wan: &WhatsAppNumber, version: &str) -> Result<Option<String>> {
    let (namespace, name) = (wan.namespace().unwrap_or_default(), crate::resources::schema_job::name(wan, version));
    let job = ctx.caches.jobs.get(&namespace, &name).await?;
    Ok(job.filter(|j| j.expires() && j.identity.deletion.is_none()).map(|j| j.identity.uid.to_string()))
}

/// Whether the schema Job of a called-off upgrade, or a pod of it, is still
/// there (its deletion waits for its pods: see [`delete_schema_job`]).
async fn schema_job_left(ctx: &Context, wan: &WhatsAppNumber, version: &str) -> Result<bool> {
    let namespace = wan.namespace().unwrap_or_default();
    let name = crate::resources::schema_job::name(wan, version);
    if ctx.caches.jobs.get(&namespace, &name).await?.is_some() {
        return Ok(true);
    }
    Ok(!schema_pods(ctx, &namespace, &name).await?.is_empty())
}

/// Another of this object's schema Jobs (or a pod of one) than the one of
/// `to` that may still run (see [`plan::other_schema_job_at_work`]).
async fn other_schema_job(ctx: &Context, wan: &WhatsAppNumber, to: &str) -> Result<Option<String>> {
    let namespace = wan.namespace().unwrap_or_default();
    let version = |name: &str| crate::resources::schema_job::version_of(wan, name);
    let jobs = ctx.caches.jobs.filter(|j| j.namespace() == namespace && version(j.name()).is_some()).await?;
    let pods = ctx
        .caches
        .schema_pods
        .filter(|p| *p.namespace == *namespace && p.job.as_deref().and_then(version).is_some())
        .await?;
    let job_versions: Vec<(String, bool, bool)> =
        jobs.iter().filter_map(|j| Some((version(j.name())?, j.finished(), j.identity.deleting()))).collect();
    let pod_versions: Vec<String> =
        pods.iter().map(|p| p.job.as_deref().and_then(version).unwrap_or_default()).collect();
    Ok(plan::other_schema_job_at_work(
        to,
        jobs.iter().zip(&job_versions).map(|(j, (v, finished, deleting))| (j.name(), v.as_str(), *finished, *deleting)),
        pods.iter().zip(&pod_versions).map(|(p, v)| (&*p.name, v.as_str(), p.finished())),
    ))
}

/// Whether this reconcile starts masters or coreapps where none were asked
/// for (the shape runs a tier whose StatefulSet is absent or at 0 replicas),
/// or makes a schema Job: a schema upgrade is as much an instance of the
/// number as its nodes.
async fn starts_an_instance(
    ctx: &Context,
    wan: &WhatsAppNumber,
    shape: &procedure::Shape,
    schema_job: Option<&str>,
) -> Result<bool> {
    use crate::resources::names::Tier;
    let namespace = wan.namespace().unwrap_or_default();
    if let Some(version) = schema_job.filter(|_| shape.schema_job) {
        let name = crate::resources::schema_job::name(wan, version);
        if ctx.caches.jobs.get(&namespace, &name).await?.is_none() {
            return Ok(true);
        }
    }
    for (tier, running) in [(Tier::Master, shape.masters_running), (Tier::Coreapp, shape.coreapps_running)] {
        if !running {
            continue;
        }
        let live = ctx.caches.statefulsets.get(&namespace, &Names::new(wan).tier(tier)).await?;
        if live.is_none_or(|s| s.state.replicas.unwrap_or(1) == 0) {
            return Ok(true);
        }
    }
    Ok(false)
}

/// The pods of the schema Job `name`, from the cache.
async fn schema_pods(
    ctx: &Context,
    namespace: &str,
    name: &str,
) -> Result<Vec<std::sync::Arc<super::cache::SchemaPod>>> {
    Ok(ctx.caches.schema_pods.filter(|p| *p.namespace == *namespace && p.job.as_deref() == Some(name)).await?)
}

/// What the apply step wrote and found.
struct Written {
    tiers: Tiers,
    /// The key Secret: created by this reconcile, or as it was.
    keys: Option<Secret>,
    service_monitor: std::result::Result<Option<String>, String>,
}

async fn apply_step(
    wan: &WhatsAppNumber,
    ctx: &Context,
    observed: &fetch::Observed,
    mut inputs: BuildInputs,
    planned: &Planned,
) -> Result<Written> {
    let (mc, status) = (&wan.spec.multiconnect, wan.status.as_ref());
    let (plan, shape) = (&planned.plan, &planned.workloads.shape);
    // Coreapps for whichever of the spec's and the client's last known shard
    // count is larger: they go only once the client reports fewer shards.
    let last_known = status.and_then(|s| s.sharding.as_ref()).and_then(|s| s.current);
    let replicas = sharding::plan(&sharding::Facts {
        desired: mc.shards,
        standby: mc.standby_coreapps,
        current: None,
        last_known,
        coreapps_ready: 0,
        registered: sharding::Registered::Unknown,
        confirmed: None,
        last_request: None,
        generation: 0,
        request_digest: None,
        retry_annotation: None,
    })
    .coreapp_replicas;
    inputs.coreapp_replicas = Some(replicas);
    inputs.shape = Some(shape.clone());
    inputs.schema_version =
        plan::schema_version(plan, &planned.workloads, planned.recorded_or_live.as_deref(), &planned.upgrade_job);
    // Recorded before the Job is made (the media claim is applied first):
    // from then on the schema may change. A first deployment's record
    // comes with the claim's creation.
    let first_called_off = planned.first_called_off.as_ref();
    inputs.schema_upgrade = match (plan::called_off(plan, status), plan.upgrade.as_ref(), first_called_off) {
        (Some(u), ..) => media::SchemaUpgrade::CalledOff { began: upgrade::attempt(u) },
        (None, Some(u), _) if shape.schema_job => {
            media::SchemaUpgrade::Begun { to: u.to.clone(), began: upgrade::attempt(u) }
        }
        (None, None, Some(began)) => media::SchemaUpgrade::CalledOff { began: began.clone() },
        (None, None, None) if planned.first_jobs.is_some() && shape.schema_job => {
            media::SchemaUpgrade::Begun { to: plan.steady_version.clone(), began: plan::first_deployment_attempt(wan) }
        }
        _ => media::SchemaUpgrade::Keep,
    };

    if let Some(u) = plan.upgrade.as_ref().filter(|_| plan.rolled_back) {
        warn!(from = %u.from, to = %u.to, message = %u.message, "upgrade called off");
        delete_schema_job(ctx, wan, &u.to).await?;
    }
    for job in &planned.keep_failed {
        keep_schema_job(ctx, wan, job).await;
    }
    let job_version = plan.upgrade.as_ref().map(|u| u.to.clone()).unwrap_or_else(|| plan.steady_version.clone());
    if starts_an_instance(ctx, wan, shape, Some(&job_version)).await?
        && !super::claim::held_now(&ctx.client, wan, &ctx.settings.operator_namespace).await?
    {
        return Err(Error::ClaimChanged);
    }
    // The keys first: the webapps' template carries their digest.
    let applier = Applier::new(&ctx.client, wan, &ctx.metrics, &ctx.caches)?;
    let created_keys = applier.ensure_keys(wan, observed.keys.as_ref()).await?;
    if let Some(keys) = &created_keys {
        inputs.webapp_keys_digest = Some(validate::keys_digest(keys));
    }
    if let Some(claim) = &planned.media_claim_now {
        inputs.live_media_claim = claim.clone();
    }
    let mut children = crate::resources::build(wan, &inputs);
    let budgets: Vec<String> = children.disruption_budgets.iter().map(|b| b.name_any()).collect();
    // A first deployment's Jobs that never started and are not the spec's:
    // the claim, which takes back the record of such a Job, right before
    // they go, nothing in between. A failure between the two leaves the
    // Job, deleted at the next turn, and never the Job gone with its record
    // left to hold the number for good.
    let deletes: Vec<&String> = planned.first_jobs.iter().flat_map(|f| &f.delete).collect();
    if !deletes.is_empty() {
        if let Some(claim) = children.media.take() {
            applier.apply(&claim).await?;
        }
        for version in deletes {
            warn!(%version, "a schema Job that never started is not the spec's (an earlier spec.version, or made from an earlier spec); deleting it");
            delete_schema_job(ctx, wan, version).await?;
        }
    }
    let tiers = applier.apply_children(children, !planned.workloads.initializing).await?;
    applier.prune::<PodDisruptionBudget>(wan, &budgets).await?;
    let service_monitor =
        applier.service_monitor(wan, status.and_then(|s| s.client_service_monitor.as_deref())).await?;
    if let Err(why) = &service_monitor {
        warn!(%why, "the client's ServiceMonitor cannot be kept");
    }
    if shape.schema_job {
        applier.ensure_job(&crate::resources::schema_job::schema_job(wan, &job_version)).await?;
    }
    Ok(Written { tiers, keys: created_keys.or_else(|| observed.keys.clone()), service_monitor })
}

/// The gateway as this reconcile sees it.
struct Gateway {
    report: Option<gateway::GatewayReport>,
    /// Probing, without a result yet: what status shows of the client stands.
    awaiting: bool,
    health: status::GatewayHealth,
    /// Health polling off: the admin session alone.
    admin_only: Option<gateway::AdminOnly>,
}

async fn observe_step(
    wan: &WhatsAppNumber,
    ctx: &Context,
    observed: &fetch::Observed,
    planned: &Planned,
    written: &Written,
) -> Result<Gateway> {
    let plan::Workloads { shape, initializing, suspended, .. } = &planned.workloads;
    let keys = written.keys.as_ref();
    let nodes_running = shape.masters_running && shape.coreapps_running && !initializing;
    let reachable = !initializing && !suspended && !planned.workloads.schema_upgrade_unfinished;
    let probing = wan.spec.health.enabled && reachable;
    // Without polling, a session still moves the admin user off its default
    // password once a webapp runs.
    let admin_only = !wan.spec.health.enabled && reachable && written.tiers.webapps.ready > 0;
    let report = if probing {
        gateway::observe(ctx, wan, observed, keys, nodes_running).await?
    } else {
        if !admin_only {
            gateway::stop_probing(ctx, wan);
        }
        None
    };
    let admin_only = if admin_only { Some(gateway::admin_only(ctx, wan, observed, keys).await?) } else { None };
    let awaiting = probing && report.is_none();
    let health = match &report {
        Some(r) => status::GatewayHealth::Probed(Box::new(r.observation.clone())),
        None if awaiting => status::GatewayHealth::Awaiting,
        None => status::GatewayHealth::NotProbed,
    };
    Ok(Gateway { report, awaiting, health, admin_only })
}

/// The shards the client runs, and the one write to the client a reconcile
/// makes: a shard change, when `sharding::plan` asks for one.
async fn shards_step(
    wan: &WhatsAppNumber,
    ctx: &Context,
    observed: &fetch::Observed,
    planned: &Planned,
    written: &Written,
    gateway: &Gateway,
) -> Option<ShardingStatus> {
    let (mc, status) = (&wan.spec.multiconnect, wan.status.as_ref());
    let keys = written.keys.as_ref();
    // Shards change only between upgrades: during one, nodes come and go on purpose.
    let last_known = status.and_then(|s| s.sharding.as_ref()).and_then(|s| s.current);
    let last_request = status.and_then(|s| s.sharding.as_ref()).and_then(|s| s.last_request.clone());
    let unknown = || sharding::status(mc.shards, last_known, &sharding::Step::Unknown, None, last_request.clone());
    let quiet = planned.plan.upgrade.is_none() && planned.workloads.external_conflict.is_none();
    // A probe for the current target is awaited, or the last one did not
    // read the count (a fail-over, a refused login): the record stands, as
    // long as it is about the count the spec asks for now. After an edit of
    // the count it is not: the client's count is to be read.
    let recorded = || status.and_then(|s| s.sharding.clone()).filter(|s| s.desired == mc.shards);
    match &gateway.report {
        Some(r) if r.shards.is_some() && quiet => {
            Some(gateway::reconcile_shards(ctx, wan, observed, r, keys, written.tiers.coreapps.ready).await)
        }
        Some(_) if quiet => recorded().or_else(|| Some(unknown())),
        None if gateway.awaiting => recorded().or_else(|| Some(unknown())),
        _ => Some(unknown()),
    }
}

/// What the upgrade in progress needs to take its next step: its node pods,
/// its schema Job, the tiers and the gateway. `None` with no upgrade under way.
async fn observe_upgrade(
    wan: &WhatsAppNumber,
    ctx: &Context,
    planned: &Planned,
    written: &Written,
    gateway: &Gateway,
) -> Result<Option<procedure::Observed>> {
    match &planned.plan.upgrade {
        Some(u) if !procedure::is_done(u) => {
            let mut facts = upgrade_facts(ctx, wan, u, &written.tiers, gateway, planned.now).await?;
            facts.job_held_for = planned.schema_job_held_for.clone();
            Ok(Some(facts))
        }
        _ => Ok(None),
    }
}

/// The upgrade's next step and the running build against its expiry: pure,
/// from the plan and what `observe_upgrade` found.
fn advance(
    wan: &WhatsAppNumber,
    catalog: &upgrade::catalog::Catalog,
    planned: &Planned,
    progress: Option<&procedure::Observed>,
) -> status::Versions {
    let (status, plan, now) = (wan.status.as_ref(), &planned.plan, planned.now);
    // Until an upgrade completes, the version it started from is the one that
    // runs, though the new one's workloads and schema record are in place.
    let mut current = match plan.upgrade.as_ref().filter(|u| !procedure::is_done(u)) {
        Some(u) => Some(u.from.clone()),
        None => planned.recorded_or_live.clone(),
    };
    let upgrade_status = match (&plan.upgrade, progress) {
        (Some(u), Some(facts)) if !procedure::is_done(u) => {
            let deadlines = procedure::Deadlines {
                step: SignedDuration::from_secs(i64::from(wan.spec.upgrade.step_deadline_seconds)),
                schema: SignedDuration::from_secs(i64::from(wan.spec.upgrade.schema_upgrade_deadline_seconds)),
            };
            let next = procedure::advance(u, facts, deadlines);
            if next.step == procedure::Step::Complete {
                current = Some(next.to.clone());
            }
            Some(next)
        }
        // Done, or (never, since `observe_upgrade` gathers facts for every
        // upgrade under way) without facts: it stays where it is.
        (Some(u), _) => Some(u.clone()),
        (None, _) => status.and_then(|s| s.upgrade.as_deref().cloned()),
    };
    // The first deployment records its version once its schema exists: from
    // then on every version change goes through the upgrade procedure.
    let current = match current {
        Some(c) => Some(c),
        None if !planned.workloads.initializing => Some(plan.steady_version.clone()),
        None => None,
    };
    let running = current.clone().unwrap_or_else(|| plan.steady_version.clone());
    // An upgrade that completed just now changes the running build.
    let build_state = if running == plan.build_version {
        plan.build.clone()
    } else {
        upgrade::policy::assess(catalog, &running, now, upgrade::before(&wan.spec.upgrade))
    };
    let build = upgrade::build_status(&running, &build_state);
    status::Versions {
        current,
        target: Some(
            plan.upgrade
                .as_ref()
                .filter(|u| !procedure::is_done(u))
                .map(|u| u.to.clone())
                .unwrap_or_else(|| plan.target.version.clone()),
        ),
        build: Some(build),
        build_state: Some(build_state),
        before: wan.spec.upgrade.before.clone(),
        upgrade: upgrade_status,
        blocker: plan.blocker.clone(),
        catalog_problems: catalog.problems.clone(),
    }
}

/// Whether the upgrade's `Verifying` step begins with this reconcile.
fn began_verifying(before: Option<&crate::api::UpgradeStatus>, after: Option<&crate::api::UpgradeStatus>) -> bool {
    let verifying = |u: Option<&crate::api::UpgradeStatus>| u.is_some_and(|u| u.step == procedure::Step::Verifying);
    verifying(after) && !verifying(before)
}

/// The gateway as an upgrade's step sees it. A probe that ended before the
/// step began says nothing of it (the probe of `Verifying` must reach the
/// new webapps); polling on and no answer yet (a restarted operator, webapps
/// not up) is no evidence that the new version connected either.
fn gateway_for_step(
    health: &status::GatewayHealth,
    probed_at: Option<Timestamp>,
    step_started_at: Timestamp,
    polling: bool,
) -> procedure::Gateway {
    match health {
        status::GatewayHealth::Probed(_) if probed_at.is_none_or(|at| at <= step_started_at) => {
            procedure::Gateway::Awaiting
        }
        status::GatewayHealth::Probed(h) if h.verdict.healthy => procedure::Gateway::Healthy,
        status::GatewayHealth::Probed(h) => procedure::Gateway::Unhealthy(h.verdict.message.clone()),
        status::GatewayHealth::Awaiting => procedure::Gateway::Awaiting,
        status::GatewayHealth::NotProbed if polling => procedure::Gateway::Awaiting,
        status::GatewayHealth::NotProbed => procedure::Gateway::NotPolled,
    }
}

fn log_advance(before: Option<&crate::api::UpgradeStatus>, after: Option<&crate::api::UpgradeStatus>) {
    if let (Some(b), Some(a)) = (before, after)
        && a.step != b.step
    {
        info!(from = %b.step, to = %a.step, "upgrade step done");
    }
}

/// What status shows of the client: the probe's findings, or what status
/// showed while no probe result is at hand.
fn client_state(
    wan: &WhatsAppNumber,
    observed: &fetch::Observed,
    planned: &Planned,
    written: &Written,
    gateway: &Gateway,
) -> status::ClientState {
    let status = wan.status.as_ref();
    let report = gateway.report.as_ref();
    status::ClientState {
        suspended: planned.workloads.suspended,
        initializing: planned.workloads.initializing,
        first_schema: planned.first_jobs.as_ref().map(|f| f.report.clone()).unwrap_or_default(),
        admin: match (report, &gateway.admin_only) {
            (Some(r), _) => status::AdminState::Seen(r.admin.clone()),
            (None, Some(gateway::AdminOnly::Seen { admin, .. })) => status::AdminState::Seen(admin.clone()),
            (None, Some(gateway::AdminOnly::Awaiting)) => status::AdminState::Awaiting,
            (None, None) if gateway.awaiting => status::AdminState::Awaiting,
            (None, None) => status::AdminState::NotContacted,
        },
        certificate: match (report, &gateway.admin_only) {
            (Some(r), _) => r.certificate.clone(),
            (None, Some(gateway::AdminOnly::Seen { certificate, .. })) => certificate.clone(),
            _ => status.and_then(|s| s.webapp_certificate.as_deref().cloned()),
        },
        registered_at: report.map_or_else(|| status.and_then(|s| s.registered_at.clone()), |r| r.registered_at.clone()),
        external_conflict: plan::conflict_to_record(
            wan,
            report.map(|r| r.external_conflict.as_ref()),
            status.and_then(|s| s.external_conflict.as_deref()),
        ),
        database_name_prefix: Some(crate::api::database_name_prefix(&wan.spec)),
        service_monitor: written.service_monitor.clone(),
        lifecycle: {
            let mut l = report.map_or_else(|| lifecycle::LifecycleReport::from_status(status), |r| r.lifecycle.clone());
            // From what is read on every pass, so that it stands whether the
            // webapp was asked this time or not.
            // The client as this pass's probe saw it, else as status shows it.
            let seen = match &gateway.health {
                status::GatewayHealth::Probed(o) => Some(o.block.gateway.as_str()),
                _ => status.and_then(|s| s.health.as_deref()).map(|h| h.gateway.as_str()),
            };
            l.registration_material = lifecycle::registration_material(wan, observed, l.registration.as_ref(), seen);
            l
        },
    }
}

/// The schema Job of `version`, as the Job and its pods report it.
async fn schema_job_state(ctx: &Context, wan: &WhatsAppNumber, version: &str) -> Result<procedure::JobState> {
    let namespace = wan.namespace().unwrap_or_default();
    let name = crate::resources::schema_job::name(wan, version);
    let job = ctx.caches.jobs.get(&namespace, &name).await?;
    let unfinished =
        job.as_ref().is_some_and(|j| upgrade::job::state(Some(&j.job()), &[]) != procedure::JobState::Succeeded);
    // Only while the Job has not succeeded: whether its pod can start at
    // all, or (failed) whether it ever did.
    let pods = if unfinished { schema_pods(ctx, &namespace, &name).await? } else { vec![] };
    let pods: Vec<Pod> = pods.iter().map(|p| p.pod()).collect();
    Ok(upgrade::job::state(job.map(|j| j.job()).as_ref(), &pods))
}

/// The schema Job of `version` read from the API server, with its pods.
async fn schema_job_state_now(ctx: &Context, wan: &WhatsAppNumber, version: &str) -> Result<procedure::JobState> {
    let namespace = wan.namespace().unwrap_or_default();
    let name = crate::resources::schema_job::name(wan, version);
    let what = || format!("reading the schema Job {namespace}/{name} and its pods");
    // A list by name: the operator reads Jobs by list and watch only.
    let jobs = Api::<Job>::namespaced(ctx.client.clone(), &namespace)
        .list(&kube::api::ListParams::default().fields(&format!("metadata.name={name}")))
        .await
        .map_err(Error::request(what()))?;
    let selector = format!("{}={name}", crate::upgrade::job::JOB_NAME_LABEL);
    let pods = Api::<Pod>::namespaced(ctx.client.clone(), &namespace)
        .list(&kube::api::ListParams::default().labels(&selector))
        .await
        .map_err(Error::request(what()))?;
    Ok(upgrade::job::state(jobs.items.first(), &pods.items))
}

/// Removes the schema Job of an upgrade that was called off (its pod never
/// started a container, so the database is as it was). In the foreground: the
/// Job stays until its pods are gone, and the old nodes wait for it, so no
/// container of the new version's schema upgrade can start beside them (a pod
/// seen pending may have started on a node that could not say so).
async fn delete_schema_job(ctx: &Context, wan: &WhatsAppNumber, version: &str) -> Result<()> {
    let jobs: Api<Job> = Api::namespaced(ctx.client.clone(), &wan.namespace().unwrap_or_default());
    match jobs.delete(&crate::resources::schema_job::name(wan, version), &DeleteParams::foreground()).await {
        Ok(_) => {
            ctx.metrics.record_write("Job", "delete");
            Ok(())
        }
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
        Err(e) => Err(Error::request(format!("deleting the schema Job of {version} of {}", wan.name_any()))(e)),
    }
}

/// Takes away a failed schema Job's time to live: left to Kubernetes it would
/// be removed a day after it failed, and the operator would take that for a
/// person's request to run it again. Not a step the reconcile waits on: a
/// refusal (RBAC without `patch` on Jobs) is logged, and the status that
/// asks a person to act is written all the same.
async fn keep_schema_job(ctx: &Context, wan: &WhatsAppNumber, job: &FailedJob) {
    let jobs: Api<Job> = Api::namespaced(ctx.client.clone(), &wan.namespace().unwrap_or_default());
    let name = crate::resources::schema_job::name(wan, &job.version);
    // The uid is a precondition: a Job made since under the name is not kept.
    let forever = serde_json::json!({"metadata": {"uid": job.uid}, "spec": {"ttlSecondsAfterFinished": null}});
    let params =
        PatchParams { field_manager: Some(crate::resources::names::FIELD_MANAGER.into()), ..Default::default() };
    match jobs.patch(&name, &params, &Patch::Merge(&forever)).await {
        Ok(_) => {
            ctx.metrics.record_write("Job", "patch");
            info!(job = %name, "the schema Job failed; kept until a person deletes it");
        }
        // Gone, or another Job of the name since (its uid is immutable).
        Err(kube::Error::Api(s)) if s.code == 404 || s.code == 422 => {}
        Err(e) => warn!(job = %name, error = %e, "the failed schema Job cannot be kept; it goes a day after it failed"),
    }
}

/// The newest version this object's masters and coreapps StatefulSets run (or
/// ran) at, from the operator's cache of them.
async fn live_version(ctx: &Context, wan: &WhatsAppNumber) -> Result<Option<String>> {
    let (namespace, uid) = (wan.namespace().unwrap_or_default(), wan.uid().unwrap_or_default());
    let names = Names::new(wan);
    let mut found = Vec::new();
    for tier in [crate::resources::names::Tier::Master, crate::resources::names::Tier::Coreapp] {
        found.extend(ctx.caches.statefulsets.get(&namespace, &names.tier(tier)).await?);
    }
    let versions = found
        .into_iter()
        .filter(|sts| sts.controlled_by(&uid))
        // Scaled to zero from the start (a first deployment waiting for its
        // schema), a StatefulSet says nothing of what ran.
        .filter(|sts| sts.state.replicas.unwrap_or(1) > 0 || sts.state.status.as_ref().is_some_and(|s| s.replicas > 0))
        .filter_map(|sts| sts.state.version.clone());
    Ok(versions.fold(None, |newest, v| upgrade::running_version(newest.as_deref(), Some(&v))))
}

/// What the upgrade procedure needs to decide its next step.
async fn upgrade_facts(
    ctx: &Context,
    wan: &WhatsAppNumber,
    u: &crate::api::UpgradeStatus,
    tiers: &status::Tiers,
    gateway: &Gateway,
    now: k8s_openapi::jiff::Timestamp,
) -> Result<procedure::Observed> {
    let node_pods =
        fencing::own_pods(&ctx.caches.node_pods, &wan.namespace().unwrap_or_default(), &wan.name_any()).await?.len();
    // Read again after apply: this reconcile may just have created the Job.
    let job = schema_job_state(ctx, wan, &u.to).await?;
    let at_target = |i: usize| tiers.versions[i].as_deref() == Some(u.to.as_str());
    let probed_at = gateway.report.as_ref().map(|r| r.probed_at);
    let gateway = gateway_for_step(&gateway.health, probed_at, u.step_started_at.0, wan.spec.health.enabled);
    let stopped = |t: &crate::api::TierStatus| t.desired == 0 && t.observed;
    Ok(procedure::Observed {
        now,
        node_pods,
        node_workloads_stopped: stopped(&tiers.masters) && stopped(&tiers.coreapps),
        job,
        job_held_for: None,
        masters_ready: at_target(0) && tiers.masters.is_ready() && tiers.masters.desired > 0,
        coreapps_ready: at_target(1) && tiers.coreapps.is_ready() && tiers.coreapps.desired > 0,
        webapps_ready: at_target(2) && tiers.webapps.is_ready(),
        gateway,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::WhatsAppNumberStatus;
    use crate::fixtures::{at, catalog, sample};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

    #[test]
    fn a_schema_job_is_outdated_once_the_spec_changes_it_and_only_if_it_never_ran() {
        let wan = sample();
        let made = crate::resources::schema_job::schema_job(&wan, "2.53.2");
        let job = |state: procedure::JobState, hash: Option<&String>, failed_pods: bool| SchemaJob {
            version: "2.53.2".into(),
            state,
            deleting: false,
            expires: true,
            uid: "u".into(),
            applied_hash: hash.cloned(),
            failed_pods,
        };
        let hash = made.annotations().get(crate::resources::names::ANNOTATION_APPLIED_HASH);
        let pending = || procedure::JobState::Pending("its pod is not scheduled".into());
        assert!(hash.is_some());
        assert!(!outdated_never_started(&wan, &job(pending(), hash, false)), "built again, the same Job");

        let mut moved = wan.clone();
        moved.spec.coreapp.node_selector.insert("zone".into(), "b".into());
        assert!(outdated_never_started(&moved, &job(pending(), hash, false)));
        let unpullable = procedure::JobState::Unstartable("ErrImagePull".into());
        assert!(outdated_never_started(&moved, &job(unpullable, hash, false)));
        assert!(outdated_never_started(&moved, &job(pending(), None, false)), "made before the hash: never ran");
        assert!(!outdated_never_started(&moved, &job(pending(), hash, true)), "a pod of it failed: it may have run");
        assert!(!outdated_never_started(&moved, &job(procedure::JobState::running(), hash, false)));

        let counted: k8s_openapi::api::batch::v1::JobStatus =
            serde_json::from_value(serde_json::json!({"uncountedTerminatedPods": {"failed": ["p"]}})).unwrap();
        assert!(failed_pods(Some(&counted)));
        assert!(!failed_pods(Some(&Default::default())) && !failed_pods(None));
    }

    fn planned(wan: &WhatsAppNumber, live: Option<&str>, first_job: Option<procedure::JobState>) -> Planned {
        let now = at("2024-05-01T00:00:00Z");
        let running = upgrade::Running { live_version: live.map(String::from), ..Default::default() };
        let plan = upgrade::plan(&wan.spec.upgrade, &wan.spec.version, wan.status.as_ref(), &running, &catalog(), now);
        let workloads = plan::workloads(wan, &plan, first_job.as_ref());
        let recorded_or_live = plan::running_version(wan, live);
        Planned {
            now,
            plan,
            workloads,
            recorded_or_live,
            upgrade_job: procedure::JobState::Absent,
            first_jobs: None,
            keep_failed: vec![],
            schema_job_held_for: None,
            first_called_off: None,
            media_claim_now: None,
        }
    }

    fn progress(planned: &Planned, node_pods: usize) -> procedure::Observed {
        procedure::Observed {
            now: planned.now,
            node_pods,
            node_workloads_stopped: node_pods == 0,
            job: procedure::JobState::Absent,
            job_held_for: None,
            masters_ready: false,
            coreapps_ready: false,
            webapps_ready: false,
            gateway: procedure::Gateway::NotPolled,
        }
    }

    #[test]
    fn a_first_deployment_records_its_version_once_its_schema_exists() {
        let wan = sample();
        let waiting = planned(&wan, None, Some(procedure::JobState::running()));
        let versions = advance(&wan, &catalog(), &waiting, None);
        assert_eq!(versions.current, None, "no version runs before its schema exists");
        assert_eq!(versions.target.as_deref(), Some("2.53.2"));

        let made = planned(&wan, None, Some(procedure::JobState::Succeeded));
        let versions = advance(&wan, &catalog(), &made, None);
        assert_eq!(versions.current.as_deref(), Some("2.53.2"));
        assert_eq!(versions.build.and_then(|b| b.expires_at).as_deref(), Some("2024-07-08"));
    }

    #[test]
    fn an_upgrade_moves_one_step_on_what_was_observed() {
        let mut wan = sample();
        wan.status = Some(WhatsAppNumberStatus { current_version: Some("2.53.2".into()), ..Default::default() });
        wan.spec.version = "2.55.1".into();
        let planned = planned(&wan, Some("2.53.2"), None);
        assert!(planned.plan.began);

        let still_running = advance(&wan, &catalog(), &planned, Some(&progress(&planned, 2)));
        let u = still_running.upgrade.expect("an upgrade");
        assert_eq!(u.step, procedure::Step::StoppingNodes, "two node pods still run");
        assert_eq!(still_running.current.as_deref(), Some("2.53.2"));
        assert_eq!(still_running.target.as_deref(), Some("2.55.1"));

        let stopped = advance(&wan, &catalog(), &planned, Some(&progress(&planned, 0)));
        assert_eq!(stopped.upgrade.expect("an upgrade").step, procedure::Step::UpgradingSchema);
        assert_eq!(stopped.current.as_deref(), Some("2.53.2"), "the old version runs until the upgrade completes");
    }

    #[test]
    fn a_completed_upgrade_changes_the_running_build() {
        let mut wan = sample();
        wan.spec.version = "2.55.1".into();
        let upgrade = crate::api::UpgradeStatus {
            from: "2.53.2".into(),
            to: "2.55.1".into(),
            step: procedure::Step::Verifying,
            started_at: Time(at("2024-04-30T23:00:00Z")),
            step_started_at: Time(at("2024-04-30T23:50:00Z")),
            message: "waiting for every shard and a primary master to connect".into(),
            stalled_reason: None,
            schema_started_at: None,
        };
        wan.status = Some(WhatsAppNumberStatus {
            current_version: Some("2.53.2".into()),
            upgrade: Some(Box::new(upgrade)),
            ..Default::default()
        });
        let planned = planned(&wan, Some("2.55.1"), None);
        // Not verified yet: the new version's workloads are in place, and the
        // old version is the one that runs.
        let verifying = procedure::Observed { gateway: procedure::Gateway::Awaiting, ..progress(&planned, 4) };
        let versions = advance(&wan, &catalog(), &planned, Some(&verifying));
        assert_eq!(versions.upgrade.as_ref().map(|u| u.step), Some(procedure::Step::Verifying));
        assert_eq!(versions.current.as_deref(), Some("2.53.2"), "until the upgrade completes");
        assert_eq!(versions.build.map(|b| b.version).as_deref(), Some("2.53.2"));

        let versions = advance(&wan, &catalog(), &planned, Some(&progress(&planned, 4)));
        assert_eq!(versions.upgrade.expect("the upgrade").step, procedure::Step::Complete);
        assert_eq!(versions.current.as_deref(), Some("2.55.1"));
        let build = versions.build.expect("a build");
        assert_eq!(build.version, "2.55.1");
        assert_eq!(build.expires_at.as_deref(), Some("2024-10-07"), "2.55.1's expiry, not 2.53.2's");
    }

    #[test]
    fn only_a_probe_that_ended_after_the_step_began_verifies_it() {
        let probed = |healthy: bool| {
            let verdict = crate::health::report::Verdict {
                healthy,
                reason: if healthy { crate::health::report::GATEWAY_CONNECTED } else { "GatewayDisconnected" },
                message: "coreapp 1 disconnected".into(),
                gateway: if healthy { "connected" } else { "disconnected" }.into(),
                primary_master: None,
                connected_coreapps: 1,
                standby_coreapps: 0,
            };
            let block = crate::api::HealthStatus::default();
            status::GatewayHealth::Probed(Box::new(crate::health::Observation { verdict, block }))
        };
        let began = at("2024-05-01T00:00:00Z");
        let (before, after) = (at("2024-04-30T23:59:50Z"), at("2024-05-01T00:00:10Z"));
        use procedure::Gateway::{Awaiting, Healthy, NotPolled, Unhealthy};
        assert_eq!(gateway_for_step(&probed(true), Some(after), began, true), Healthy);
        assert_eq!(gateway_for_step(&probed(true), Some(before), began, true), Awaiting, "a probe of the old webapps");
        assert_eq!(gateway_for_step(&probed(true), Some(began), began, true), Awaiting);
        assert_eq!(gateway_for_step(&probed(false), Some(before), began, true), Awaiting);
        assert_eq!(
            gateway_for_step(&probed(false), Some(after), began, true),
            Unhealthy("coreapp 1 disconnected".into())
        );
        assert_eq!(gateway_for_step(&status::GatewayHealth::Awaiting, None, began, true), Awaiting);
        assert_eq!(gateway_for_step(&status::GatewayHealth::NotProbed, None, began, true), Awaiting);
        assert_eq!(gateway_for_step(&status::GatewayHealth::NotProbed, None, began, false), NotPolled);
    }

    #[test]
    fn the_probe_starts_afresh_when_verifying_begins() {
        let step = |step| {
            Some(crate::api::UpgradeStatus { step, ..procedure::begin("2.53.2", "2.55.1", at("2024-05-01T00:00:00Z")) })
        };
        let (rolling, verifying) = (step(procedure::Step::RollingWebapps), step(procedure::Step::Verifying));
        assert!(began_verifying(rolling.as_ref(), verifying.as_ref()));
        assert!(!began_verifying(verifying.as_ref(), verifying.as_ref()), "once, not in every reconcile");
        assert!(!began_verifying(verifying.as_ref(), step(procedure::Step::Complete).as_ref()));
        assert!(!began_verifying(None, None));
    }
}
