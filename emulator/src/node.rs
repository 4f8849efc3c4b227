//! What coreapps and masters share: registration and heartbeats in the
//! database, the schema gate, the control port the webapps query, and the
//! decision to hold a session with WhatsApp's servers.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{Value, json};
use sqlx::Row;
use tokio::sync::{Notify, watch};

use crate::api::{self, ApiError, ErrorItem};
use crate::catalog::{self, Catalog, Lifetime};
use crate::config::{Config, ListenAddress};
use crate::db::{Arg, Db, Settings, now_ms};
use crate::health::{GatewayStatus, HealthRole, NodeStatus};
use crate::link::{self, LinkState, Target};
use crate::schema;
use crate::{Error, roles};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Coreapp,
    Master,
}

impl Kind {
    pub fn db_role(self) -> &'static str {
        match self {
            Kind::Coreapp => "coreapp",
            Kind::Master => "master",
        }
    }
}

#[derive(Debug)]
pub struct NodeState {
    pub ready: bool,
    pub link: LinkState,
    pub conflict: bool,
    pub primary: bool,
    pub shard: Option<i64>,
    pub registered: bool,
    pub expired: bool,
    /// Why WhatsApp banned the number, while it is banned.
    pub banned: Option<String>,
    /// Why the number's registration was dropped, until it is registered again.
    pub registration_lost: Option<String>,
    pub connects_total: u64,
}

pub struct NodeCtx {
    pub cfg: Config,
    pub db: Db,
    pub id: String,
    pub kind: Kind,
    pub lifetime: Lifetime,
    pub started: Instant,
    pub started_ms: i64,
    pub state: Mutex<NodeState>,
    /// Wakes the node loop early (after a registration, for instance).
    pub wake: Notify,
    /// Held while a reshard runs; a second request meanwhile gets 403.
    pub reshard: tokio::sync::Mutex<()>,
    pub http: reqwest::Client,
}

impl NodeCtx {
    pub fn set_link(&self, l: LinkState) {
        let mut s = self.state.lock().expect("node state");
        if l == LinkState::Connected && s.link != LinkState::Connected {
            s.connects_total += 1;
        }
        s.link = l;
    }

    pub fn set_conflict(&self, c: bool) {
        let mut s = self.state.lock().expect("node state");
        if c && !s.conflict {
            link::log_conflict(&self.id);
        }
        s.conflict = c;
    }

    pub fn is_primary(&self) -> bool {
        self.state.lock().expect("node state").primary
    }

    /// Whether this node answers master-only requests (registration, shards):
    /// the primary master, or the coreapp of a single-instance deployment.
    pub fn serves_master_requests(&self) -> bool {
        match self.kind {
            Kind::Master => self.is_primary(),
            Kind::Coreapp => !self.cfg.multiconnect,
        }
    }

    pub fn status(&self) -> NodeStatus {
        let s = self.state.lock().expect("node state");
        let gateway_status = if !s.ready {
            GatewayStatus::Uninitialized
        } else if !s.registered {
            GatewayStatus::Unregistered
        } else {
            match s.link {
                LinkState::Connected => GatewayStatus::Connected,
                LinkState::Connecting => GatewayStatus::Connecting,
                LinkState::Disconnected => GatewayStatus::Disconnected,
            }
        };
        let role = match (self.kind, s.primary) {
            (Kind::Master, true) => HealthRole::PrimaryMaster,
            (Kind::Master, false) => HealthRole::SecondaryMaster,
            (Kind::Coreapp, _) => HealthRole::Coreapp,
        };
        let mut errors = vec![];
        if let Some(why) = &s.banned {
            errors.push(ErrorItem::new(api::ACCESS_DENIED, api::title_of(api::ACCESS_DENIED), why.clone()));
        }
        if let Some(why) = s.registration_lost.as_ref().filter(|_| !s.registered) {
            errors.push(ErrorItem::new(api::GENERIC_ERROR, "Logged off", why.clone()));
        }
        // A second instance of the number shows in health only as a node
        // that is not connected: the coreapp logs the conflict (docs/client.md).
        if s.expired {
            errors.push(ErrorItem::new(
                api::ACCESS_DENIED,
                api::title_of(api::ACCESS_DENIED),
                format!(
                    "App Expired: a version upgrade is required (version {} expired on {})",
                    self.cfg.version,
                    self.lifetime.expires_at.strftime("%Y-%m-%d")
                ),
            ));
        }
        NodeStatus { gateway_status, role, errors, shard: s.shard, version: self.cfg.version.clone() }
    }

    async fn heartbeat(&self, ready: bool) -> Result<(), Error> {
        let now = now_ms();
        let ready = i64::from(ready);
        let n = self
            .db
            .exec(
                "UPDATE wa_nodes SET heartbeat_ms = ?, ready = ?, address = ?, control_port = ?, version = ?, role = ? WHERE id = ?",
                &[
                    Arg::I(now),
                    Arg::I(ready),
                    Arg::S(&self.cfg.coreapp_hostname),
                    Arg::I(self.cfg.control_port() as i64),
                    Arg::S(&self.cfg.version),
                    Arg::S(self.kind.db_role()),
                    Arg::S(&self.id),
                ],
            )
            .await?;
        if n == 0 {
            let _ = self
                .db
                .exec(
                    "INSERT INTO wa_nodes (id, role, version, address, control_port, ready, started_ms, heartbeat_ms) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    &[
                        Arg::S(&self.id),
                        Arg::S(self.kind.db_role()),
                        Arg::S(&self.cfg.version),
                        Arg::S(&self.cfg.coreapp_hostname),
                        Arg::I(self.cfg.control_port() as i64),
                        Arg::I(ready),
                        Arg::I(self.started_ms),
                        Arg::I(now),
                    ],
                )
                .await;
        }
        Ok(())
    }

    async fn my_shard(&self) -> Result<Option<i64>, Error> {
        let rows = self.db.rows("SELECT shard FROM wa_shard_map WHERE node_id = ?", &[Arg::S(&self.id)]).await?;
        rows.first().map(|r| r.try_get::<i64, _>(0).map_err(Error::db("read shard map"))).transpose()
    }
}

// ---- control port -------------------------------------------------------

async fn control_status(State(ctx): State<Arc<NodeCtx>>) -> Json<NodeStatus> {
    Json(ctx.status())
}

async fn control_stats(State(ctx): State<Arc<NodeCtx>>) -> Json<Value> {
    let st = ctx.status();
    let s = ctx.state.lock().expect("node state");
    Json(json!({
        "uptime_seconds": ctx.started.elapsed().as_secs(),
        "gateway_connected": i64::from(st.gateway_status == GatewayStatus::Connected),
        "gateway_connects_total": s.connects_total,
        "primary_master": i64::from(st.role == HealthRole::PrimaryMaster),
        "shard_assigned": i64::from(s.shard.is_some()),
        "expired": i64::from(s.expired),
        "conflict": i64::from(s.conflict),
    }))
}

fn control_router(ctx: Arc<NodeCtx>) -> Router {
    Router::new()
        .route("/control/status", get(control_status))
        .route("/control/stats", get(control_stats))
        .route("/control/shards", get(roles::master::get_shards).post(roles::master::post_shards))
        .route("/control/account", get(roles::master::get_account).post(roles::master::post_account))
        .route("/control/account/verify", post(roles::master::post_verify))
        .fallback(|| async { ApiError::new(axum::http::StatusCode::NOT_FOUND, api::NOT_FOUND, "Unknown control path") })
        .with_state(ctx)
}

/// Binds the four external ports on every address with
/// `WA_TCP_LISTEN_ADDRESS=any`, else on `COREAPP_HOSTNAME`. The control port
/// serves the webapps; the others only accept and close, since their
/// node-to-node protocol is not part of what the emulator reproduces.
async fn bind_ports(ctx: Arc<NodeCtx>) -> Result<(), Error> {
    let host = match ctx.cfg.tcp_listen {
        ListenAddress::Any => "0.0.0.0".to_string(),
        ListenAddress::Hostname => ctx.cfg.coreapp_hostname.clone(),
    };
    for (i, port) in ctx.cfg.external_ports.iter().enumerate() {
        let listener = tokio::net::TcpListener::bind((host.as_str(), *port))
            .await
            .map_err(|e| Error::Fatal(format!("cannot bind {host}:{port}: {e}")))?;
        if i == 2 {
            tracing::info!(address = %listener.local_addr()?, "control port listening");
            let app = control_router(ctx.clone());
            tokio::spawn(async move {
                let _ = axum::serve(listener, app).await;
            });
        } else {
            tokio::spawn(async move {
                while let Ok((sock, _)) = listener.accept().await {
                    drop(sock);
                }
            });
        }
    }
    Ok(())
}

// ---- node loop ----------------------------------------------------------

pub async fn run(cfg: Config, kind: Kind) -> Result<(), Error> {
    let catalog = Catalog::load(cfg.release_catalog.as_deref())?;
    let lifetime = catalog.lookup(&cfg.version).ok_or_else(|| {
        Error::Config(format!(
            "version {} is not in the release catalog; add it (WA_EMULATOR_RELEASE_CATALOG) so its expiry is known",
            cfg.version
        ))
    })?;
    let db = schema::ensure(&cfg).await?;
    // Gate before binding any port: a node of the wrong version never serves.
    schema::check_current(&db, &cfg).await?;
    let ctx = Arc::new(NodeCtx {
        id: cfg.node_id(),
        db,
        kind,
        lifetime,
        started: Instant::now(),
        started_ms: now_ms(),
        state: Mutex::new(NodeState {
            ready: false,
            link: LinkState::Disconnected,
            conflict: false,
            primary: false,
            shard: None,
            registered: false,
            expired: false,
            banned: None,
            registration_lost: None,
            connects_total: 0,
        }),
        wake: Notify::new(),
        reshard: tokio::sync::Mutex::new(()),
        http: reqwest::Client::builder().timeout(Duration::from_secs(5)).build().expect("HTTP client"),
        cfg,
    });
    tracing::info!(node = %ctx.id, role = kind.db_role(), version = %ctx.cfg.version, "starting");
    bind_ports(ctx.clone()).await?;
    let link = link::spawn(ctx.clone());
    let result = tokio::select! {
        r = node_loop(ctx.clone(), &link) => r,
        _ = crate::shutdown_signal() => Ok(()),
    };
    // Leave cleanly: drop the session, the lease and the node's row.
    link.send_replace(None);
    if kind == Kind::Master && ctx.is_primary() {
        let _ = ctx
            .db
            .exec("UPDATE wa_master_lease SET expires_ms = 0 WHERE id = 1 AND holder = ?", &[Arg::S(&ctx.id)])
            .await;
    }
    let _ = ctx.db.exec("DELETE FROM wa_nodes WHERE id = ?", &[Arg::S(&ctx.id)]).await;
    result
}

/// The client's schema gate, re-checked on every heartbeat: a node that
/// does not match the schema, or that sees an upgrade running, drops its
/// session and stops with the UPGRADE line; its orchestrator restarts it.
async fn gate(ctx: &NodeCtx, link: &watch::Sender<Option<Target>>) -> Result<(), Error> {
    let row = match ctx.db.schema().await {
        Ok(row) => row,
        Err(e) => {
            tracing::warn!(error = %e, "cannot read the schema version");
            return Ok(());
        }
    };
    if let Some(e) = schema::gate_error(&ctx.cfg, &row) {
        ctx.state.lock().expect("node state").ready = false;
        link.send_replace(None);
        return Err(e);
    }
    ctx.state.lock().expect("node state").ready = true;
    Ok(())
}

async fn node_loop(ctx: Arc<NodeCtx>, link: &watch::Sender<Option<Target>>) -> Result<(), Error> {
    let mut logged_expiry = false;
    tracing::info!(node = %ctx.id, "schema is current; node is up");
    loop {
        gate(&ctx, link).await?;
        let settings = match ctx.db.settings().await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read settings");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        if let Err(e) = tick(&ctx, &settings, link, &mut logged_expiry).await {
            tracing::warn!(error = %e, "cluster step failed");
        }
        let pause = Duration::from_secs(settings.heartbeat_interval);
        tokio::select! {
            _ = tokio::time::sleep(pause) => {}
            _ = ctx.wake.notified() => {}
        }
    }
}

async fn tick(
    ctx: &Arc<NodeCtx>,
    settings: &Settings,
    link: &watch::Sender<Option<Target>>,
    logged_expiry: &mut bool,
) -> Result<(), Error> {
    ctx.heartbeat(true).await?;
    let primary = match ctx.kind {
        Kind::Master => {
            let primary = roles::master::hold_lease(ctx, settings).await?;
            let was = std::mem::replace(&mut ctx.state.lock().expect("node state").primary, primary);
            if primary != was {
                tracing::info!(node = %ctx.id, "{}", if primary { "became the primary master" } else { "is a secondary master" });
            }
            if primary {
                roles::master::manage_cluster(ctx, settings).await?;
            }
            primary
        }
        Kind::Coreapp => false,
    };
    let shard = match ctx.kind {
        Kind::Coreapp if ctx.cfg.multiconnect => ctx.my_shard().await?,
        _ => None,
    };
    let expired = catalog::is_expired(&ctx.lifetime, ctx.cfg.release_clock());
    if expired && !*logged_expiry {
        tracing::error!(
            version = %ctx.cfg.version,
            expired_on = %ctx.lifetime.expires_at.strftime("%Y-%m-%d"),
            "This build has expired: refusing to connect to WhatsApp servers; upgrade to a newer version"
        );
        *logged_expiry = true;
    }
    if ctx.serves_master_requests() {
        roles::master::sync_ban(ctx, settings).await;
    }
    let registered = settings.registered_number.is_some();
    {
        let mut s = ctx.state.lock().expect("node state");
        s.shard = shard;
        s.expired = expired;
        s.registered = registered;
        s.banned = settings.banned.clone();
        s.registration_lost = settings.registration_lost.clone();
    }
    // Who holds a session: a coreapp with a shard (any coreapp outside
    // multiconnect), and the primary master only with two shards or more; in
    // high availability (one shard) the primary master stays disconnected.
    let eligible = match ctx.kind {
        Kind::Master => primary && settings.shards >= 2,
        Kind::Coreapp => !ctx.cfg.multiconnect || shard.is_some(),
    };
    let target = match (&settings.registered_number, eligible && !expired && settings.banned.is_none()) {
        (Some(number), true) => {
            Some(Target { number: number.clone(), deployment: settings.deployment_id.clone(), shard })
        }
        _ => None,
    };
    link.send_if_modified(|cur| {
        if *cur != target {
            *cur = target.clone();
            true
        } else {
            false
        }
    });
    Ok(())
}
