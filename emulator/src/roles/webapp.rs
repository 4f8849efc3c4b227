//! The webapp: the REST API over HTTPS. Stateless; it reads the cluster from
//! the database, asks nodes for their state on their control port, and
//! forwards master-only requests to the primary master.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::{Query, Request, State};
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use base64::Engine as _;
use rand::Rng;
use serde_json::{Value, json};
use sqlx::Row;

use crate::api::{self, ApiError, ApiResult};
use crate::config::Config;
use crate::db::{Arg, Db, now_ms};
use crate::health::{self, NodeStatus};
use crate::schema::{self, Gate};
use crate::{Error, tls};
use crate::{appsettings, auth, backup};

pub struct Web {
    cfg: Config,
    db: Db,
    jwt_key: Vec<u8>,
    http: reqwest::Client,
    requests: AtomicU64,
    started: Instant,
}

type S = State<Arc<Web>>;

struct NodeRow {
    id: String,
    role: String,
    address: String,
    port: i64,
}

impl Web {
    async fn nodes(&self) -> Result<Vec<NodeRow>, Error> {
        let settings = self.db.settings().await?;
        // Nodes silent for 5 unhealthy intervals are gone, not just unreachable.
        let since = now_ms() - 5 * settings.unhealthy_interval as i64 * 1000;
        let rows = self
            .db
            .rows(
                "SELECT id, role, address, control_port FROM wa_nodes WHERE heartbeat_ms > ? ORDER BY id",
                &[Arg::I(since)],
            )
            .await?;
        rows.iter()
            .map(|r| {
                Ok(NodeRow {
                    id: r.try_get(0).map_err(Error::db("read nodes"))?,
                    role: r.try_get(1).map_err(Error::db("read nodes"))?,
                    address: r.try_get(2).map_err(Error::db("read nodes"))?,
                    port: r.try_get(3).map_err(Error::db("read nodes"))?,
                })
            })
            .collect()
    }

    fn control_url(n: &NodeRow, path: &str) -> String {
        let host = if n.address.contains(':') { format!("[{}]", n.address) } else { n.address.clone() };
        format!("http://{host}:{}{path}", n.port)
    }

    async fn ask(&self, n: &NodeRow, path: &str) -> Result<Value, String> {
        let resp = self.http.get(Self::control_url(n, path)).send().await.map_err(|e| e.to_string())?;
        if !resp.status().is_success() {
            return Err(format!("HTTP {}", resp.status()));
        }
        resp.json::<Value>().await.map_err(|e| e.to_string())
    }

    /// Where master-only requests go: the lease holder in multiconnect, the
    /// coreapp otherwise.
    async fn primary(&self) -> Result<NodeRow, ApiError> {
        if self.cfg.multiconnect {
            let rows = self
                .db
                .rows(
                    "SELECT n.id, n.role, n.address, n.control_port FROM wa_master_lease l JOIN wa_nodes n ON n.id = l.holder WHERE l.id = 1 AND l.expires_ms > ?",
                    &[Arg::I(now_ms())],
                )
                .await?;
            let r = rows.first().ok_or_else(|| ApiError::not_ready("No primary master is available"))?;
            Ok(NodeRow {
                id: r.try_get(0).map_err(ApiError::internal)?,
                role: r.try_get(1).map_err(ApiError::internal)?,
                address: r.try_get(2).map_err(ApiError::internal)?,
                port: r.try_get(3).map_err(ApiError::internal)?,
            })
        } else {
            self.nodes()
                .await?
                .into_iter()
                .find(|n| n.role == "coreapp")
                .ok_or_else(|| ApiError::not_ready("No coreapp is available"))
        }
    }

    async fn forward(&self, method: Method, path: &str, body: Option<Value>) -> ApiResult {
        let target = self.primary().await?;
        let mut req = self.http.request(method, Self::control_url(&target, path));
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req
            .send()
            .await
            .map_err(|e| ApiError::not_ready(format!("The primary node {} cannot be reached: {e}", target.id)))?;
        let status = StatusCode::from_u16(resp.status().as_u16()).unwrap_or(StatusCode::BAD_GATEWAY);
        let body: Value =
            resp.json().await.map_err(|e| ApiError::internal(format!("bad answer from {}: {e}", target.id)))?;
        Ok(api::ok(status, body))
    }
}

// ---- authentication -----------------------------------------------------

/// Who made a request.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Caller {
    Admin,
    ApiKey,
    Nobody,
}

fn caller(web: &Web, headers: &HeaderMap) -> Caller {
    let header = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()).unwrap_or("");
    if let Some(token) = header.strip_prefix("Bearer ") {
        // `admin` is the only user the emulator knows.
        match auth::verify_token(&web.jwt_key, token.trim(), jiff::Timestamp::now().as_second()) {
            Some(c) if c.sub == "admin" => Caller::Admin,
            _ => Caller::Nobody,
        }
    } else if let Some(key) = header.strip_prefix("Apikey ") {
        if web.cfg.api_key.as_deref().is_some_and(|k| auth::constant_time_eq(k.as_bytes(), key.trim().as_bytes())) {
            Caller::ApiKey
        } else {
            Caller::Nobody
        }
    } else {
        Caller::Nobody
    }
}

/// Health, stats and metrics: an admin token or the API key, which Meta
/// documents for monitoring only.
async fn require_monitoring(State(web): S, req: Request, next: Next) -> Response {
    web.requests.fetch_add(1, Ordering::Relaxed);
    if caller(&web, req.headers()) == Caller::Nobody {
        return ApiError::unauthorized("Invalid credentials.").into_response();
    }
    next.run(req).await
}

/// Every other endpoint needs an admin session (a Bearer token from
/// `POST /v1/users/login`); a banned number's client refuses them all.
async fn require_admin(State(web): S, req: Request, next: Next) -> Response {
    web.requests.fetch_add(1, Ordering::Relaxed);
    match caller(&web, req.headers()) {
        Caller::Admin => {}
        Caller::ApiKey => {
            return ApiError::unauthorized(
                "The API key is accepted on the health, stats and metrics endpoints only: log in as an admin user",
            )
            .into_response();
        }
        Caller::Nobody => return ApiError::unauthorized("Invalid credentials.").into_response(),
    }
    if req.uri().path() != "/v1/users/logout" {
        match web.db.settings().await {
            Ok(s) => {
                if let Some(why) = s.banned {
                    return ApiError::new(StatusCode::FORBIDDEN, api::ACCESS_DENIED, why).into_response();
                }
            }
            Err(e) => return ApiError::from(e).into_response(),
        }
    }
    next.run(req).await
}

fn basic_credentials(headers: &HeaderMap) -> Option<(String, String)> {
    let v = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let b64 = v.strip_prefix("Basic ")?;
    let raw = base64::engine::general_purpose::STANDARD.decode(b64.trim()).ok()?;
    let raw = String::from_utf8(raw).ok()?;
    let (u, p) = raw.split_once(':')?;
    Some((u.to_string(), p.to_string()))
}

async fn login(State(web): S, headers: HeaderMap, body: Bytes) -> ApiResult {
    web.requests.fetch_add(1, Ordering::Relaxed);
    let (user, password) = basic_credentials(&headers).ok_or_else(|| ApiError::unauthorized("Invalid credentials."))?;
    let rows = web
        .db
        .rows("SELECT salt, password_hash, must_change FROM wa_users WHERE username = ?", &[Arg::S(&user)])
        .await?;
    let row = rows.first().ok_or_else(|| ApiError::unauthorized("Invalid credentials."))?;
    let salt: String = row.try_get(0).map_err(ApiError::internal)?;
    let hash: String = row.try_get(1).map_err(ApiError::internal)?;
    let must_change: i64 = row.try_get(2).map_err(ApiError::internal)?;
    if !auth::constant_time_eq(auth::hash_password(&salt, &password).as_bytes(), hash.as_bytes()) {
        return Err(ApiError::unauthorized("Invalid credentials."));
    }
    let new_password = if body.iter().all(u8::is_ascii_whitespace) {
        None
    } else {
        let v: Value = serde_json::from_slice(&body)
            .map_err(|e| ApiError::bad(api::INVALID_PARAMETER, format!("Invalid JSON: {e}")))?;
        v.get("new_password").and_then(Value::as_str).map(str::to_string)
    };
    match new_password {
        None if must_change != 0 => {
            return Err(ApiError::new(
                StatusCode::UNAUTHORIZED,
                api::PASSWORD_CHANGE_REQUIRED,
                "Password change required. Log in with new_password set.",
            ));
        }
        None => {}
        Some(p) => {
            if let Some(problem) = auth::password_problem(&p) {
                return Err(ApiError::bad(api::INVALID_PARAMETER, problem));
            }
            let (salt, hash) = auth::hash_new_password(&p);
            web.db
                .exec(
                    "UPDATE wa_users SET salt = ?, password_hash = ?, must_change = 0 WHERE username = ?",
                    &[Arg::S(&salt), Arg::S(&hash), Arg::S(&user)],
                )
                .await?;
            tracing::info!(user = %user, "password changed");
        }
    }
    let (token, claims) = auth::issue_token(&web.jwt_key, &user, jiff::Timestamp::now().as_second());
    let expires = jiff::Timestamp::from_second(claims.exp).unwrap_or_default();
    Ok(api::ok(
        StatusCode::OK,
        json!({"users": [{"token": token, "expires_after": expires.strftime("%Y-%m-%d %H:%M:%S+00:00").to_string()}]}),
    ))
}

// ---- health and stats ---------------------------------------------------

async fn statuses(web: &Web) -> Result<Vec<(String, Result<NodeStatus, String>)>, ApiError> {
    let mut nodes = web.nodes().await?;
    if !web.cfg.multiconnect {
        nodes.retain(|n| n.role == "coreapp");
    }
    let asks = nodes.iter().map(|n| async move {
        let s = web
            .ask(n, "/control/status")
            .await
            .and_then(|v| serde_json::from_value::<NodeStatus>(v).map_err(|e| e.to_string()));
        (n.id.clone(), s)
    });
    Ok(futures::future::join_all(asks).await)
}

async fn get_health(State(web): S) -> ApiResult {
    let st = statuses(&web).await?;
    let body = if web.cfg.multiconnect { health::multiconnect(&st) } else { health::single(&st) };
    Ok(api::ok(StatusCode::OK, body))
}

fn prom_escape(s: &str) -> String {
    s.replace('\\', "\\\\").replace('"', "\\\"")
}

async fn stats_app(State(web): S, Query(q): Query<HashMap<String, String>>) -> ApiResult {
    let nodes = web.nodes().await?;
    let w: &Web = &web;
    let asks = nodes.iter().map(|n| async move { (n.id.clone(), w.ask(n, "/control/stats").await) });
    let results = futures::future::join_all(asks).await;
    if q.get("format").map(String::as_str) == Some("prometheus") {
        let mut by_metric: std::collections::BTreeMap<String, Vec<String>> = Default::default();
        for (id, r) in &results {
            let Ok(Value::Object(m)) = r else { continue };
            for (k, v) in m {
                let Some(num) = v.as_f64() else { continue };
                let label =
                    if web.cfg.multiconnect { format!("{{node=\"{}\"}}", prom_escape(id)) } else { String::new() };
                by_metric.entry(format!("wa_app_{k}")).or_default().push(format!("wa_app_{k}{label} {num}"));
            }
        }
        let mut text = String::new();
        for (name, samples) in by_metric {
            text.push_str(&format!("# TYPE {name} gauge\n"));
            for s in samples {
                text.push_str(&s);
                text.push('\n');
            }
        }
        return Ok(([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response());
    }
    let app: serde_json::Map<String, Value> = results
        .into_iter()
        .map(|(id, r)| (id, r.unwrap_or_else(|e| json!({"errors": [{"code": api::SERVICE_NOT_READY, "title": "Service not ready", "details": e}]}))))
        .collect();
    Ok(api::ok(StatusCode::OK, json!({"stats": {"app": app}})))
}

async fn stats_db(State(web): S) -> ApiResult {
    // The real endpoint is expensive; here it only counts rows.
    let mut out = serde_json::Map::new();
    for table in ["wa_nodes", "wa_shard_map", "wa_settings", "wa_users"] {
        let rows = web.db.rows(&format!("SELECT COUNT(*) FROM {table}"), &[]).await?;
        let n: i64 = rows.first().and_then(|r| r.try_get(0).ok()).unwrap_or(0);
        out.insert(table.to_string(), json!(n));
    }
    Ok(api::ok(StatusCode::OK, json!({"stats": {"db": out}})))
}

async fn metrics(State(web): S) -> Response {
    let text = format!(
        "# TYPE wa_webapp_info gauge\nwa_webapp_info{{version=\"{}\"}} 1\n# TYPE wa_webapp_requests_total counter\nwa_webapp_requests_total {}\n# TYPE wa_webapp_uptime_seconds gauge\nwa_webapp_uptime_seconds {}\n",
        prom_escape(&web.cfg.version),
        web.requests.load(Ordering::Relaxed),
        web.started.elapsed().as_secs()
    );
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response()
}

// ---- settings and forwarded requests ------------------------------------

async fn get_app_settings(State(web): S) -> ApiResult {
    let app = appsettings::current(&web.db).await?;
    Ok(api::ok(StatusCode::OK, json!({"settings": {"application": app}})))
}

/// Only the fields present change; one invalid value refuses the whole request.
async fn patch_app_settings(State(web): S, Json(body): Json<Value>) -> ApiResult {
    let patch = appsettings::validate(&body).map_err(|e| ApiError::bad(api::INVALID_PARAMETER, e))?;
    appsettings::apply(&web.db, &patch).await?;
    Ok(api::ok(StatusCode::OK, json!({})))
}

/// `DELETE /v1/settings/application`: Meta's "reset application settings".
async fn delete_app_settings(State(web): S) -> ApiResult {
    appsettings::reset(&web.db, &web.cfg).await?;
    tracing::info!("application settings reset to their defaults");
    Ok(api::ok(StatusCode::OK, json!({})))
}

const WEBHOOK_CA: &str = "webhook_ca";

/// `POST /v1/certificates/webhooks/ca`: a PEM file of one or more CA
/// certificates, which the client uses to verify the webhook's server.
async fn post_webhook_ca(State(web): S, body: Bytes) -> ApiResult {
    let pem = String::from_utf8(body.to_vec())
        .map_err(|_| ApiError::bad(api::INVALID_PARAMETER, "The CA certificate must be PEM text"))?;
    if pem.len() > 15_000 {
        return Err(ApiError::bad(api::INVALID_PARAMETER, "The CA certificate file is too large"));
    }
    tls::check_ca_bundle(&pem)
        .map_err(|e| ApiError::bad(api::INVALID_PARAMETER, format!("Invalid CA certificate: {e}")))?;
    web.db.put_blob(WEBHOOK_CA, &pem).await?;
    tracing::info!("webhook CA certificate uploaded");
    Ok(api::ok(StatusCode::OK, json!({})))
}

/// `GET /v1/certificates/webhooks/ca`: the uploaded PEM, 404 without one.
async fn get_webhook_ca(State(web): S) -> ApiResult {
    match web.db.get_blob(WEBHOOK_CA).await? {
        Some(pem) => Ok(([(header::CONTENT_TYPE, "text/plain")], pem).into_response()),
        None => Err(ApiError::new(StatusCode::NOT_FOUND, api::NOT_FOUND, "No webhook CA certificate is set")),
    }
}

/// `DELETE /v1/certificates/webhooks/ca`: removes it (200 whether or not one was set).
async fn delete_webhook_ca(State(web): S) -> ApiResult {
    if web.db.delete_blob(WEBHOOK_CA).await? {
        tracing::info!("webhook CA certificate removed");
    }
    Ok(api::ok(StatusCode::OK, json!({})))
}

// ---- backup and restore -------------------------------------------------

fn password_of(body: &Value) -> Result<&str, ApiError> {
    match body.get("password") {
        None | Some(Value::Null) => Err(ApiError::bad(api::MISSING_PARAMETER, "password is required")),
        Some(v) => v
            .as_str()
            .filter(|p| !p.is_empty())
            .ok_or_else(|| ApiError::bad(api::INVALID_PARAMETER, "password must be a non-empty string")),
    }
}

/// Live masters and coreapps: rows heartbeating within `unhealthy_interval`.
async fn live_nodes(web: &Web) -> Result<(u64, u64), ApiError> {
    let settings = web.db.settings().await?;
    let since = now_ms() - settings.unhealthy_interval as i64 * 1000;
    let rows = web.db.rows("SELECT role FROM wa_nodes WHERE heartbeat_ms > ?", &[Arg::I(since)]).await?;
    let roles: Vec<String> = rows.iter().filter_map(|r| r.try_get::<String, _>(0).ok()).collect();
    let masters = roles.iter().filter(|r| *r == "master").count() as u64;
    let coreapps = roles.iter().filter(|r| *r == "coreapp").count() as u64;
    Ok((masters, coreapps))
}

/// `POST /v1/settings/backup {"password"}`: the registration, the
/// application settings and the shard count, encrypted with the password.
async fn post_backup(State(web): S, Json(body): Json<Value>) -> ApiResult {
    let password = password_of(&body)?;
    let settings = web.db.settings().await?;
    let (masters, coreapps) = live_nodes(&web).await?;
    let contents = backup::Contents {
        format: backup::FORMAT,
        client_version: web.cfg.version.clone(),
        created_at: crate::instant::rfc3339(jiff::Timestamp::now()),
        deployment: settings.deployment_id.clone(),
        registration: settings
            .registered_number
            .clone()
            .map(|number| backup::Registration { number, registered_at_ms: settings.registered_at_ms }),
        shards: settings.shards,
        masters,
        coreapps,
        application: appsettings::current(&web.db).await?,
    };
    let plain = serde_json::to_vec(&contents).map_err(ApiError::internal)?;
    let data = backup::seal(password, &plain);
    tracing::info!(registered = contents.registration.is_some(), shards = contents.shards, "settings backed up");
    Ok(api::ok(StatusCode::OK, json!({"settings": {"data": data}})))
}

/// `POST /v1/settings/restore {"password","data"}`: restores a backup, the
/// documented way to move a number to a new setup. Meta requires the new
/// setup to have the same number of shards, masters and coreapps; a restore
/// into another shape is refused and changes nothing.
async fn post_restore(State(web): S, Json(body): Json<Value>) -> ApiResult {
    let password = password_of(&body)?;
    let data = match body.get("data") {
        None | Some(Value::Null) => return Err(ApiError::bad(api::MISSING_PARAMETER, "data is required")),
        Some(v) => v.as_str().ok_or_else(|| ApiError::bad(api::INVALID_PARAMETER, "data must be a string"))?,
    };
    let plain = backup::open(password, data).map_err(|e| {
        ApiError::bad(
            api::INVALID_PARAMETER,
            match e {
                backup::OpenError::WrongPassword => "Restore failed: wrong password for this backup",
                backup::OpenError::Malformed => "Restore failed: data is not a backup from /v1/settings/backup",
                backup::OpenError::Damaged => "Restore failed: the backup data is damaged",
            },
        )
    })?;
    let contents: backup::Contents = serde_json::from_slice(&plain)
        .map_err(|e| ApiError::bad(api::INVALID_PARAMETER, format!("Restore failed: unreadable backup: {e}")))?;
    if contents.format != backup::FORMAT {
        return Err(ApiError::bad(api::INVALID_PARAMETER, "Restore failed: unknown backup format"));
    }
    let (masters, coreapps) = live_nodes(&web).await?;
    if (masters, coreapps) != (contents.masters, contents.coreapps) {
        return Err(ApiError::bad(
            api::INVALID_PARAMETER,
            format!(
                "Restore failed: the backup was made on a setup with {} shard(s), {} master(s) and {} coreapp(s); this setup runs {masters} master(s) and {coreapps} coreapp(s). The new setup must have the same number of shards, masters and coreapps",
                contents.shards, contents.masters, contents.coreapps
            ),
        ));
    }
    let patch = appsettings::validate(&contents.application)
        .map_err(|e| ApiError::bad(api::INVALID_PARAMETER, format!("Restore failed: {e}")))?;
    appsettings::store(&web.db, &Value::Object(patch.doc.clone())).await?;
    appsettings::apply(&web.db, &appsettings::Patch { doc: Default::default(), ..patch }).await?;
    web.db.set_setting("shards", &contents.shards.to_string()).await?;
    web.db.set_setting("pending_number", "").await?;
    match &contents.registration {
        Some(r) => {
            let at = r.registered_at_ms.unwrap_or_else(now_ms);
            web.db.set_setting("registered_at_ms", &at.to_string()).await?;
            web.db.set_setting("registered_number", &r.number).await?;
            web.db.set_setting("registration_lost", "").await?;
        }
        None => {
            web.db.set_setting("registered_number", "").await?;
        }
    }
    tracing::info!(
        from = %contents.deployment,
        number = ?contents.registration.as_ref().map(|r| &r.number),
        shards = contents.shards,
        "settings restored from a backup"
    );
    Ok(api::ok(StatusCode::OK, json!({})))
}

async fn get_shards(State(web): S) -> ApiResult {
    web.forward(Method::GET, "/control/shards", None).await
}

async fn post_shards(State(web): S, Json(body): Json<Value>) -> ApiResult {
    web.forward(Method::POST, "/control/shards", Some(body)).await
}

async fn post_account(State(web): S, Json(body): Json<Value>) -> ApiResult {
    web.forward(Method::POST, "/control/account", Some(body)).await
}

async fn post_verify(State(web): S, Json(body): Json<Value>) -> ApiResult {
    web.forward(Method::POST, "/control/account/verify", Some(body)).await
}

/// `POST /v1/certificates/external`: `text/plain`, the private key, the
/// certificate and one or more intermediate CA certificates, in that order.
/// Served from the webapps' next start.
async fn post_external_certificate(State(web): S, body: Bytes) -> ApiResult {
    let pem = String::from_utf8(body.to_vec())
        .map_err(|_| ApiError::bad(api::INVALID_PARAMETER, "The certificate file must be PEM text"))?;
    if pem.len() > 15_000 {
        return Err(ApiError::bad(api::INVALID_PARAMETER, "The certificate file is too large"));
    }
    tls::check_upload(&pem).map_err(|e| ApiError::bad(api::INVALID_PARAMETER, format!("Invalid certificate: {e}")))?;
    tls::store_upload(&web.db, &pem).await?;
    tracing::info!("certificate uploaded; restart every webapp to serve it");
    Ok((StatusCode::OK, [(header::CONTENT_TYPE, "application/json")], "null").into_response())
}

/// `GET /v1/certificates/external/ca`: the CA of the served certificate, as
/// `text/plain`: the deployment's own CA, or the chain of the upload.
async fn get_external_ca(State(web): S) -> ApiResult {
    let pem = match tls::uploaded(&web.db).await? {
        Some(upload) => tls::uploaded_chain(&upload),
        None => tls::ca(&web.db).await?.0,
    };
    if pem.trim().is_empty() {
        return Ok(StatusCode::NOT_FOUND.into_response());
    }
    Ok(([(header::CONTENT_TYPE, "text/plain")], pem).into_response())
}

async fn logout() -> ApiResult {
    Ok(api::ok(StatusCode::OK, json!({})))
}

pub fn router(web: Arc<Web>) -> Router {
    let monitoring = Router::new()
        .route("/v1/health", get(get_health))
        .route("/v1/stats/app", get(stats_app))
        .route("/v1/stats/db", get(stats_db))
        .route("/metrics", get(metrics))
        .route_layer(middleware::from_fn_with_state(web.clone(), require_monitoring));
    let admin = Router::new()
        .route("/v1/users/logout", post(logout))
        .route("/v1/account", post(post_account))
        .route("/v1/account/verify", post(post_verify))
        .route("/v1/account/shards", get(get_shards).post(post_shards))
        .route("/v1/settings/application", get(get_app_settings).patch(patch_app_settings).delete(delete_app_settings))
        .route("/v1/settings/backup", post(post_backup))
        .route("/v1/settings/restore", post(post_restore))
        .route("/v1/certificates/webhooks/ca", get(get_webhook_ca).post(post_webhook_ca).delete(delete_webhook_ca))
        .route("/v1/certificates/external", post(post_external_certificate))
        .route("/v1/certificates/external/ca", get(get_external_ca))
        .route_layer(middleware::from_fn_with_state(web.clone(), require_admin));
    Router::new()
        .route("/v1/users/login", post(login))
        .merge(monitoring)
        .merge(admin)
        .fallback(|| async { ApiError::new(StatusCode::NOT_FOUND, api::NOT_FOUND, "Unknown path") })
        .with_state(web)
}

pub async fn run(cfg: Config) -> Result<(), Error> {
    if let Some(k) = &cfg.api_key
        && !auth::api_key_valid(k)
    {
        return Err(Error::Config("WA_API_KEY must be 12 to 128 characters long".into()));
    }
    let jwt_key = match &cfg.jwt_key {
        Some(k) => k.as_bytes().to_vec(),
        None => {
            tracing::warn!("WA_WEB_JWT_CRYPTO_KEY is not set: tokens from this webapp are valid on this webapp only");
            let mut rng = rand::rng();
            (0..32).map(|_| rng.random()).collect()
        }
    };
    let db = schema::ensure(&cfg).await?;
    schema::check_current(&db, &cfg).await?;
    let acceptor = tls::acceptor(&db, &cfg).await?;
    let web = Arc::new(Web {
        http: reqwest::Client::builder()
            .timeout(Duration::from_secs(3))
            .connect_timeout(Duration::from_secs(1))
            .build()
            .expect("HTTP client"),
        cfg,
        db,
        jwt_key,
        requests: AtomicU64::new(0),
        started: Instant::now(),
    });
    tokio::spawn(watch_schema(web.clone()));
    let listener = tokio::net::TcpListener::bind(&web.cfg.web_listen)
        .await
        .map_err(|e| Error::Fatal(format!("cannot listen on {}: {e}", web.cfg.web_listen)))?;
    tracing::info!(listen = %listener.local_addr()?, version = %web.cfg.version, "webapp listening (HTTPS)");
    tls::serve(listener, acceptor, router(web)).await
}

/// A webapp outlived by a schema upgrade stops, as old and new versions do
/// not serve together; restarted, it refuses to start.
async fn watch_schema(web: Arc<Web>) {
    let Ok(mine) = schema::schema_number(&web.cfg.version) else { return };
    loop {
        tokio::time::sleep(Duration::from_secs(2)).await;
        if let Ok(row) = web.db.schema().await
            && schema::gate_decision(mine, row.version, &row.state) == Gate::Refuse
            && let Some(e) = schema::gate_error(&web.cfg, &row)
        {
            tracing::error!("{e}");
            std::process::exit(1);
        }
    }
}
