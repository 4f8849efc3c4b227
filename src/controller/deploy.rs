//! A claimed, valid number is deployed in four steps, each reading what the
//! one before produced: plan (what runs, the upgrade plan, the workloads'
//! shape), apply (keys, children, the schema Job), observe (the gateway's
//! health and shards) and advance (the upgrade's next step, the build's
//! expiry); their results make the status.

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{Pod, Secret};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::api::{DeleteParams, ListParams};
use kube::{Api, ResourceExt};
use tracing::{info, warn};

use super::apply::Applier;
use super::error::{Error, Result};
use super::status::{self, Applied, Tiers};
use super::{Context, fencing, fetch, gateway, lifecycle, plan, validate};
use crate::api::{ShardingStatus, WhatsAppNumber};
use crate::resources::BuildInputs;
use crate::resources::names::Names;
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
    let versions = advance_step(wan, ctx, observed, &planned, &written, &gateway).await?;
    Ok(Applied {
        client: client_state(wan, &planned, &written, &gateway),
        tiers: written.tiers,
        health: gateway.health,
        sharding: gateway.sharding,
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
}

async fn plan_step(wan: &WhatsAppNumber, ctx: &Context, observed: &fetch::Observed) -> Result<Planned> {
    let status = wan.status.as_ref();
    let now = Timestamp::now();
    // What runs: status, the live workloads and the schema Job of an upgrade
    // under way (whether it can still be called off).
    // Only a claim the operator manages carries its record.
    let managed_claim = observed.media_claim.as_ref().filter(|_| wan.spec.media.existing_claim.is_none());
    let live_version = plan::live_evidence(wan, live_version(ctx, wan).await?.as_deref(), managed_claim);
    let job = match status.and_then(|s| s.upgrade.as_ref()) {
        Some(u) if u.step == procedure::Step::UpgradingSchema => schema_job_state(ctx, wan, &u.to).await?,
        _ => procedure::JobState::Absent,
    };
    let running = upgrade::Running { live_version, job };
    let plan = upgrade::plan(&wan.spec.upgrade, &wan.spec.version, status, &running, &observed.catalog, now);
    if let Some(u) = plan.upgrade.as_ref().filter(|_| plan.began) {
        info!(from = %u.from, to = %u.to, "starting an upgrade");
    }
    if let Some(u) = plan.upgrade.as_ref().filter(|_| plan.rolled_back) {
        warn!(from = %u.from, to = %u.to, message = %u.message, "upgrade called off");
        delete_schema_job(ctx, wan, &u.to).await?;
    }
    let recorded_or_live = plan::running_version(wan, running.live_version.as_deref());
    // A first deployment creates the schema before anything else starts.
    let first_job = match &recorded_or_live {
        Some(_) => None,
        None => Some(schema_job_state(ctx, wan, &plan.steady_version).await?),
    };
    let workloads = plan::workloads(wan, &plan, first_job.as_ref());
    Ok(Planned { now, plan, workloads, recorded_or_live, upgrade_job: running.job })
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
    })
    .coreapp_replicas;
    inputs.coreapp_replicas = Some(replicas);
    inputs.shape = Some(shape.clone());
    inputs.schema_version =
        plan::schema_version(plan, &planned.workloads, planned.recorded_or_live.as_deref(), &planned.upgrade_job);

    // The keys first: the webapps' template carries their digest.
    let applier = Applier::new(&ctx.client, wan, &ctx.metrics, &ctx.caches)?;
    let created_keys = applier.ensure_keys(wan, observed.keys.as_ref()).await?;
    if let Some(keys) = &created_keys {
        inputs.webapp_keys_digest = Some(validate::keys_digest(keys));
    }
    let children = crate::resources::build(wan, &inputs);
    let budgets: Vec<String> = children.disruption_budgets.iter().map(|b| b.name_any()).collect();
    let tiers = applier.apply_children(children, !planned.workloads.initializing).await?;
    applier.prune::<PodDisruptionBudget>(wan, &budgets).await?;
    let service_monitor =
        applier.service_monitor(wan, status.and_then(|s| s.client_service_monitor.as_deref())).await?;
    if let Err(why) = &service_monitor {
        warn!(%why, "the client's ServiceMonitor cannot be kept");
    }
    if shape.schema_job {
        let version = plan.upgrade.as_ref().map(|u| u.to.clone()).unwrap_or_else(|| plan.steady_version.clone());
        applier.ensure_job(&crate::resources::schema_job::schema_job(wan, &version)).await?;
    }
    Ok(Written { tiers, keys: created_keys.or_else(|| observed.keys.clone()), service_monitor })
}

/// The gateway as this reconcile sees it.
struct Gateway {
    report: Option<gateway::GatewayReport>,
    /// Probing, without a result yet: what status shows of the client stands.
    awaiting: bool,
    sharding: Option<ShardingStatus>,
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
    let (mc, status) = (&wan.spec.multiconnect, wan.status.as_ref());
    let plan::Workloads { shape, initializing, suspended, external_conflict } = &planned.workloads;
    let keys = written.keys.as_ref();
    let nodes_running = shape.masters_running && shape.coreapps_running && !initializing;
    let reachable = !initializing && !suspended;
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
    // Shards change only between upgrades: during one, nodes come and go on purpose.
    let last_known = status.and_then(|s| s.sharding.as_ref()).and_then(|s| s.current);
    let last_request = status.and_then(|s| s.sharding.as_ref()).and_then(|s| s.last_request.clone());
    let unknown = || sharding::status(mc.shards, last_known, &sharding::Step::Unknown, None, last_request.clone());
    let sharding = match &report {
        Some(r) if r.shards.is_some() && planned.plan.upgrade.is_none() && external_conflict.is_none() => {
            Some(gateway::reconcile_shards(ctx, wan, observed, r, keys, written.tiers.coreapps.ready).await)
        }
        None if awaiting => status.and_then(|s| s.sharding.clone()).or_else(|| Some(unknown())),
        _ => Some(unknown()),
    };
    let health = match &report {
        Some(r) => status::GatewayHealth::Probed(Box::new(r.observation.clone())),
        None if awaiting => status::GatewayHealth::Awaiting,
        None => status::GatewayHealth::NotProbed,
    };
    Ok(Gateway { report, awaiting, sharding, health, admin_only })
}

/// The upgrade's next step and the running build against its expiry.
async fn advance_step(
    wan: &WhatsAppNumber,
    ctx: &Context,
    observed: &fetch::Observed,
    planned: &Planned,
    written: &Written,
    gateway: &Gateway,
) -> Result<status::Versions> {
    let (status, plan, now) = (wan.status.as_ref(), &planned.plan, planned.now);
    let mut current = planned.recorded_or_live.clone();
    let upgrade_status = match &plan.upgrade {
        Some(u) if procedure::is_done(u) => Some(u.clone()),
        Some(u) => {
            let facts = upgrade_facts(ctx, wan, u, &written.tiers, gateway.health.observation(), now).await?;
            let deadlines = procedure::Deadlines {
                step: SignedDuration::from_secs(i64::from(wan.spec.upgrade.step_deadline_seconds)),
                schema: SignedDuration::from_secs(i64::from(wan.spec.upgrade.schema_upgrade_deadline_seconds)),
            };
            let next = procedure::advance(u, &facts, deadlines);
            if next.step != u.step {
                info!(from = %u.step, to = %next.step, "upgrade step done");
            }
            if next.step == procedure::Step::Complete {
                current = Some(next.to.clone());
            }
            Some(next)
        }
        None => status.and_then(|s| s.upgrade.clone()),
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
        upgrade::policy::assess(&observed.catalog, &running, now, upgrade::before(&wan.spec.upgrade))
    };
    let build = upgrade::build_status(&running, &build_state);

    let labels = ctx.metrics.number(wan);
    let expiry = build.expires_at.as_ref().and_then(|d| d.parse::<k8s_openapi::jiff::civil::Date>().ok());
    match expiry.and_then(|d| d.to_zoned(k8s_openapi::jiff::tz::TimeZone::UTC).ok()) {
        Some(z) => {
            ctx.metrics.build_expiry.get_or_create(&labels).set(z.timestamp().as_second() as f64);
        }
        None => {
            ctx.metrics.build_expiry.remove(&labels);
        }
    }
    if !observed.catalog.problems.is_empty() {
        warn!(problems = ?observed.catalog.problems, "release catalog entries were skipped");
    }

    Ok(status::Versions {
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
        catalog_problems: observed.catalog.problems.clone(),
    })
}

/// What status shows of the client: the probe's findings, or what status
/// showed while no probe result is at hand.
fn client_state(wan: &WhatsAppNumber, planned: &Planned, written: &Written, gateway: &Gateway) -> status::ClientState {
    let status = wan.status.as_ref();
    let report = gateway.report.as_ref();
    status::ClientState {
        suspended: planned.workloads.suspended,
        initializing: planned.workloads.initializing,
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
            _ => status.and_then(|s| s.webapp_certificate.clone()),
        },
        registered_at: report.map_or_else(|| status.and_then(|s| s.registered_at.clone()), |r| r.registered_at.clone()),
        external_conflict: match report {
            Some(r) => r.external_conflict.clone(),
            None if gateway.awaiting => status.and_then(|s| s.external_conflict.clone()),
            None => None,
        }
        .filter(|c| !plan::resolved(wan, c)),
        database_name_prefix: Some(crate::api::database_name_prefix(&wan.spec)),
        service_monitor: written.service_monitor.clone(),
        lifecycle: report.map_or_else(|| lifecycle::LifecycleReport::from_status(status), |r| r.lifecycle.clone()),
    }
}

/// The schema Job of `version`, as the Job and its pods report it.
async fn schema_job_state(ctx: &Context, wan: &WhatsAppNumber, version: &str) -> Result<procedure::JobState> {
    let namespace = wan.namespace().unwrap_or_default();
    let name = crate::resources::schema_job::name(wan, version);
    let job = ctx.caches.jobs.get(&namespace, &name).await?;
    let unfinished = job.as_ref().is_some_and(|j| {
        !matches!(upgrade::job::state(Some(j), &[]), procedure::JobState::Succeeded | procedure::JobState::Failed(_))
    });
    // Only while the Job runs: whether its pod can start at all.
    let pods = if unfinished {
        let selector = format!("batch.kubernetes.io/job-name={name}");
        Api::<Pod>::namespaced(ctx.client.clone(), &namespace)
            .list(&ListParams::default().labels(&selector))
            .await?
            .items
    } else {
        vec![]
    };
    Ok(upgrade::job::state(job.as_deref(), &pods))
}

/// Removes the schema Job of an upgrade that was called off (its pod never
/// started a container, so the database is as it was).
async fn delete_schema_job(ctx: &Context, wan: &WhatsAppNumber, version: &str) -> Result<()> {
    let jobs: Api<Job> = Api::namespaced(ctx.client.clone(), &wan.namespace().unwrap_or_default());
    match jobs.delete(&crate::resources::schema_job::name(wan, version), &DeleteParams::background()).await {
        Ok(_) => {
            ctx.metrics.record_write("Job", "delete");
            Ok(())
        }
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
        Err(e) => Err(Error::request(format!("deleting the schema Job of {version} of {}", wan.name_any()))(e)),
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
        .filter(|sts| sts.owner_references().iter().any(|r| r.controller == Some(true) && r.uid == uid))
        // Scaled to zero from the start (a first deployment waiting for its
        // schema), a StatefulSet says nothing of what ran.
        .filter(|sts| {
            sts.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1) > 0
                || sts.status.as_ref().is_some_and(|s| s.replicas > 0)
        })
        .filter_map(|sts| {
            let template = sts.spec.as_ref()?.template.metadata.as_ref()?;
            template.labels.as_ref()?.get(crate::resources::names::LABEL_VERSION).cloned()
        });
    Ok(versions.fold(None, |newest, v| upgrade::running_version(newest.as_deref(), Some(&v))))
}

/// What the upgrade procedure needs to decide its next step.
async fn upgrade_facts(
    ctx: &Context,
    wan: &WhatsAppNumber,
    u: &crate::api::UpgradeStatus,
    tiers: &status::Tiers,
    health: Option<&crate::health::Observation>,
    now: k8s_openapi::jiff::Timestamp,
) -> Result<procedure::Observed> {
    let node_pods =
        fencing::own_node_pods(&ctx.caches.node_pods, &wan.namespace().unwrap_or_default(), &wan.name_any())
            .await?
            .len();
    // Read again after apply: this reconcile may just have created the Job.
    let job = schema_job_state(ctx, wan, &u.to).await?;
    let at_target = |i: usize| tiers.versions[i].as_deref() == Some(u.to.as_str());
    let gateway = match health {
        None => procedure::Gateway::NotPolled,
        Some(h) if h.verdict.healthy => procedure::Gateway::Healthy,
        Some(h) => procedure::Gateway::Unhealthy(h.verdict.message.clone()),
    };
    Ok(procedure::Observed {
        now,
        node_pods,
        job,
        masters_ready: at_target(0) && tiers.masters.is_ready() && tiers.masters.desired > 0,
        coreapps_ready: at_target(1) && tiers.coreapps.is_ready() && tiers.coreapps.desired > 0,
        webapps_ready: at_target(2) && tiers.webapps.is_ready(),
        gateway,
    })
}
