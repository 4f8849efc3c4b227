//! The master: the lease that makes one of them primary, shard assignment,
//! and the master-only requests (shards, registration) the webapps forward.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde::Deserialize;
use serde_json::json;
use sqlx::Row;

use crate::Error;
use crate::api::{self, ApiError, ApiResult};
use crate::config::Config;
use crate::db::{Arg, Settings, now_ms};
use crate::node::{self, Kind, NodeCtx};
use crate::roles::gateway::digits;

pub async fn run(cfg: Config) -> Result<(), Error> {
    node::run(cfg, Kind::Master).await
}

pub const VALID_SHARDS: [u64; 6] = [1, 2, 4, 8, 16, 32];

/// Takes or renews the master lease, which lasts `unhealthy_interval`; a
/// master that stops renewing loses it to the next one to try.
pub async fn hold_lease(ctx: &NodeCtx, settings: &Settings) -> Result<bool, Error> {
    let now = now_ms();
    let until = now + settings.unhealthy_interval as i64 * 1000;
    ctx.db
        .exec(
            "UPDATE wa_master_lease SET holder = ?, expires_ms = ? WHERE id = 1 AND (holder = ? OR expires_ms < ?)",
            &[Arg::S(&ctx.id), Arg::I(until), Arg::S(&ctx.id), Arg::I(now)],
        )
        .await?;
    let rows = ctx.db.rows("SELECT holder, expires_ms FROM wa_master_lease WHERE id = 1", &[]).await?;
    let Some(r) = rows.first() else { return Ok(false) };
    let holder: String = r.try_get(0).map_err(Error::db("read lease"))?;
    let expires: i64 = r.try_get(1).map_err(Error::db("read lease"))?;
    Ok(holder == ctx.id && expires > now)
}

/// Shard assignment: healthy coreapps keep the shards they hold; vacant shards
/// go to healthy standbys in the order given (oldest first); shards beyond the
/// count are dropped. A shard without a healthy candidate stays vacant.
pub fn assign(shards: u64, current: &BTreeMap<i64, String>, healthy: &[String]) -> BTreeMap<i64, String> {
    let healthy_set: HashSet<&String> = healthy.iter().collect();
    let mut used: HashSet<String> = HashSet::new();
    let mut out = BTreeMap::new();
    for (shard, node) in current {
        if (*shard as u64) < shards && healthy_set.contains(node) && used.insert(node.clone()) {
            out.insert(*shard, node.clone());
        }
    }
    let mut standby = healthy.iter().filter(|n| !used.contains(*n));
    for shard in 0..shards as i64 {
        if out.contains_key(&shard) {
            continue;
        }
        match standby.next() {
            Some(n) => {
                out.insert(shard, n.clone());
            }
            None => break,
        }
    }
    out
}

/// One step of cluster management by the primary master.
pub async fn manage_cluster(ctx: &NodeCtx, settings: &Settings) -> Result<(), Error> {
    let now = now_ms();
    let unhealthy_ms = settings.unhealthy_interval as i64 * 1000;
    let rows = ctx
        .db
        .rows(
            "SELECT id FROM wa_nodes WHERE role = 'coreapp' AND ready = 1 AND heartbeat_ms > ? ORDER BY started_ms, id",
            &[Arg::I(now - unhealthy_ms)],
        )
        .await?;
    let healthy: Vec<String> = rows.iter().filter_map(|r| r.try_get::<String, _>(0).ok()).collect();
    let rows = ctx.db.rows("SELECT shard, node_id FROM wa_shard_map", &[]).await?;
    let mut current = BTreeMap::new();
    for r in rows {
        current.insert(
            r.try_get::<i64, _>(0).map_err(Error::db("read shard map"))?,
            r.try_get::<String, _>(1).map_err(Error::db("read shard map"))?,
        );
    }
    let next = assign(settings.shards, &current, &healthy);
    if next != current {
        for (shard, node) in &next {
            if current.get(shard) != Some(node) {
                tracing::info!(shard, node = %node, previous = ?current.get(shard), "assigning shard");
            }
        }
        for shard in current.keys().filter(|s| !next.contains_key(s)) {
            tracing::warn!(shard, "shard has no healthy coreapp");
        }
        let mut tx = ctx.db.pool.begin().await.map_err(Error::db("begin"))?;
        sqlx::query("DELETE FROM wa_shard_map").execute(&mut *tx).await.map_err(Error::db("write shard map"))?;
        for (shard, node) in &next {
            let sql = ctx.db.sql("INSERT INTO wa_shard_map (shard, node_id) VALUES (?, ?)").into_owned();
            sqlx::query(&sql)
                .bind(*shard)
                .bind(node.clone())
                .execute(&mut *tx)
                .await
                .map_err(Error::db("write shard map"))?;
        }
        tx.commit().await.map_err(Error::db("commit"))?;
    }
    // Forget nodes that have been silent for long: they were not shut down
    // cleanly and will not come back under the same container id.
    ctx.db.exec("DELETE FROM wa_nodes WHERE heartbeat_ms < ?", &[Arg::I(now - 10 * unhealthy_ms.max(30_000))]).await?;
    Ok(())
}

fn require_master(ctx: &NodeCtx) -> Result<(), ApiError> {
    if ctx.serves_master_requests() {
        Ok(())
    } else {
        Err(ApiError::not_primary_master(format!("Node {} is not the primary master", ctx.id)))
    }
}

fn require<'a>(v: &'a Option<String>, name: &str) -> Result<&'a str, ApiError> {
    v.as_deref()
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .ok_or_else(|| ApiError::bad(api::MISSING_PARAMETER, format!("{name} is required")))
}

pub async fn get_shards(State(ctx): State<Arc<NodeCtx>>) -> ApiResult {
    require_master(&ctx)?;
    let s = ctx.db.settings().await?;
    Ok(api::ok(StatusCode::OK, json!({"account": {"shards": s.shards}})))
}

#[derive(Deserialize)]
pub struct ShardsRequest {
    cc: Option<String>,
    phone_number: Option<String>,
    shards: Option<serde_json::Value>,
    #[serde(default)]
    #[allow(dead_code)]
    pin: Option<String>,
    cert: Option<String>,
}

/// Set-shards is dangerous with the real client, and so it is here:
/// - `cert` is required from v2.45 (400/1008 without it);
/// - an expired certificate gets the number banned by WhatsApp's servers
///   (403/1005; every node disconnects, every call but monitoring is refused);
/// - a wrong certificate logs the client off (400/1009; the registration is
///   dropped and the number must be registered again);
/// - more than 7 days after the number was registered the change is applied
///   but the number is disconnected (201; it must be registered again).
pub async fn post_shards(State(ctx): State<Arc<NodeCtx>>, Json(r): Json<ShardsRequest>) -> ApiResult {
    require_master(&ctx)?;
    let cc = require(&r.cc, "cc")?;
    let phone = require(&r.phone_number, "phone_number")?;
    let cert = if cert_required(&ctx.cfg.version) {
        Some(require(&r.cert, "cert")?)
    } else {
        r.cert.as_deref().map(str::trim).filter(|c| !c.is_empty())
    };
    let shards = match &r.shards {
        None => return Err(ApiError::bad(api::MISSING_PARAMETER, "shards is required")),
        Some(v) => v.as_u64().or_else(|| v.as_str().and_then(|s| s.parse().ok())),
    };
    let shards = shards
        .filter(|n| VALID_SHARDS.contains(n))
        .ok_or_else(|| ApiError::bad(api::INVALID_PARAMETER, "shards must be one of 1, 2, 4, 8, 16, 32"))?;
    let Ok(_guard) = ctx.reshard.try_lock() else {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            api::SERVICE_NOT_READY,
            "Resharding is in progress: temporarily unavailable, retry",
        ));
    };
    let settings = ctx.db.settings().await?;
    if let Some(why) = &settings.banned {
        return Err(ApiError::new(StatusCode::FORBIDDEN, api::ACCESS_DENIED, why.clone()));
    }
    let number = digits(&format!("{cc}{phone}"));
    match &settings.registered_number {
        Some(n) if *n == number => {}
        Some(_) => {
            return Err(ApiError::bad(
                api::INVALID_PARAMETER,
                "cc and phone_number do not match the registered number",
            ));
        }
        None => return Err(ApiError::bad(api::INVALID_PARAMETER, "The number is not registered")),
    }
    // The real client answers 403 "retry" while a reshard is under way; the
    // emulator considers one under way for two heartbeats after a change.
    let until: i64 = ctx.db.get_setting("resharding_until_ms").await?.and_then(|v| v.parse().ok()).unwrap_or(0);
    if until > now_ms() {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            api::SERVICE_NOT_READY,
            "Resharding is in progress: temporarily unavailable, retry",
        ));
    }
    if let Some(cert) = cert {
        match check_shards_cert(&ctx, &number, &settings.deployment_id, cert).await? {
            CertVerdict::Valid => {}
            CertVerdict::Banned => {
                let why = format!(
                    "Account banned: set shards was called with an expired certificate; WhatsApp banned +{number}"
                );
                tracing::error!("{why}");
                ctx.db.set_setting("banned", &why).await?;
                ctx.wake.notify_one();
                return Err(ApiError::new(StatusCode::FORBIDDEN, api::ACCESS_DENIED, why));
            }
            CertVerdict::Wrong => {
                let why = "Logged off: set shards was called with a wrong certificate; register the number again";
                log_off(&ctx, why).await?;
                return Err(ApiError::bad(api::INVALID_PARAMETER, why));
            }
        }
    }
    if settings.shards != shards {
        tracing::info!(from = settings.shards, to = shards, "changing the shard count");
        let until = now_ms() + 2 * settings.heartbeat_interval as i64 * 1000;
        ctx.db.set_setting("resharding_until_ms", &until.to_string()).await?;
        ctx.db.set_setting("shards", &shards.to_string()).await?;
    }
    let registered_at = settings.registered_at_ms.unwrap_or_else(now_ms);
    if now_ms() - registered_at > SHARDS_SAFE_AFTER_REGISTRATION_MS {
        log_off(
            &ctx,
            "Disconnected: set shards was called more than 7 days after the number was registered; register the number again",
        )
        .await?;
        return Ok(api::ok(StatusCode::CREATED, json!({})));
    }
    if settings.shards != shards {
        let settings = ctx.db.settings().await?;
        manage_cluster(&ctx, &settings).await?;
    }
    Ok(api::ok(StatusCode::CREATED, json!({})))
}

/// Set-shards more than 7 days after registration disconnects the number.
pub const SHARDS_SAFE_AFTER_REGISTRATION_MS: i64 = 7 * 24 * 3600 * 1000;

/// `cert` is required by set-shards from v2.45.
pub fn cert_required(version: &str) -> bool {
    crate::schema::schema_number(version).is_ok_and(|n| n >= 2045)
}

/// Drops the registration: every node disconnects and reports `unregistered`
/// with `why` until the number is registered again.
async fn log_off(ctx: &NodeCtx, why: &str) -> Result<(), ApiError> {
    tracing::error!("{why}");
    ctx.db.set_setting("registration_lost", why).await?;
    ctx.db.set_setting("registered_number", "").await?;
    ctx.wake.notify_one();
    Ok(())
}

enum CertVerdict {
    Valid,
    Banned,
    Wrong,
}

/// WhatsApp's servers judge the certificate of a set-shards request; an
/// expired one gets the number banned there.
async fn check_shards_cert(ctx: &NodeCtx, number: &str, deployment: &str, cert: &str) -> Result<CertVerdict, ApiError> {
    let url = format!("http://{}/v1/account/shards", ctx.cfg.gateway);
    let resp = ctx
        .http
        .post(url)
        .json(&json!({"number": number, "deployment": deployment, "cert": cert}))
        .send()
        .await
        .map_err(|e| ApiError::not_ready(format!("Cannot reach WhatsApp servers: {e}")))?;
    let v: serde_json::Value = resp.json().await.map_err(ApiError::internal)?;
    Ok(match v["result"].as_str() {
        Some("valid") => CertVerdict::Valid,
        Some("banned") => CertVerdict::Banned,
        _ => CertVerdict::Wrong,
    })
}

/// Mirrors WhatsApp's ban of the number into the database, so that every
/// node and webapp sees it, and clears it once WhatsApp lifts it.
pub async fn sync_ban(ctx: &NodeCtx, settings: &Settings) {
    let Some(number) = &settings.registered_number else { return };
    let url = format!("http://{}/v1/register/check", ctx.cfg.gateway);
    // Short: this runs on the heartbeat path, which must not stall.
    let request = ctx.http.post(url).timeout(std::time::Duration::from_secs(1));
    let Ok(resp) = request.json(&json!({"number": number, "deployment": settings.deployment_id})).send().await else {
        return;
    };
    let Ok(v) = resp.json::<serde_json::Value>().await else { return };
    let banned = v["banned"].as_str().map(str::to_string);
    match (&settings.banned, &banned) {
        (Some(_), None) => {
            tracing::info!(number = %number, "WhatsApp lifted the ban");
            let _ = ctx.db.set_setting("banned", "").await;
        }
        (None, Some(why)) => {
            tracing::error!(number = %number, "{why}");
            let _ = ctx.db.set_setting("banned", why).await;
        }
        _ => {}
    }
}

#[derive(Deserialize)]
pub struct AccountRequest {
    cc: Option<String>,
    phone_number: Option<String>,
    method: Option<String>,
    cert: Option<String>,
    #[serde(default)]
    pin: Option<String>,
}

/// `POST /v1/account`: 201 when the number is already registered to this
/// deployment, else WhatsApp's servers judge the certificate, the two-step
/// PIN and the rate limit, and send a code (202).
pub async fn post_account(State(ctx): State<Arc<NodeCtx>>, Json(r): Json<AccountRequest>) -> ApiResult {
    require_master(&ctx)?;
    let cc = require(&r.cc, "cc")?;
    let phone = require(&r.phone_number, "phone_number")?;
    let method = require(&r.method, "method")?;
    let cert = require(&r.cert, "cert")?;
    if method != "sms" && method != "voice" {
        return Err(ApiError::bad(api::INVALID_PARAMETER, "method must be sms or voice"));
    }
    let pin = r.pin.as_deref().map(str::trim).filter(|p| !p.is_empty());
    if pin.is_some_and(|p| p.len() != 6 || !p.chars().all(|c| c.is_ascii_digit())) {
        return Err(ApiError::bad(api::INVALID_PARAMETER, "pin must be 6 digits"));
    }
    let number = digits(&format!("{cc}{phone}"));
    let settings = ctx.db.settings().await?;
    if settings.registered_number.as_deref() == Some(number.as_str())
        && still_registered(&ctx, &number, &settings).await?
    {
        return Ok(api::ok(StatusCode::CREATED, json!({})));
    }
    let url = format!("http://{}/v1/register/request", ctx.cfg.gateway);
    let resp = ctx
        .http
        .post(url)
        .json(&json!({"cc": cc, "phone_number": phone, "method": method, "deployment": settings.deployment_id, "cert": cert, "pin": pin}))
        .send()
        .await
        .map_err(|e| ApiError::not_ready(format!("Cannot reach WhatsApp servers: {e}")))?;
    if !resp.status().is_success() {
        let status = resp.status().as_u16();
        let v: serde_json::Value = resp.json().await.unwrap_or_default();
        let details = v["details"].as_str().unwrap_or("").to_string();
        return Err(match v["error"].as_str().unwrap_or("") {
            "banned" => ApiError::new(StatusCode::FORBIDDEN, api::ACCESS_DENIED, details),
            "cert_wrong" => ApiError::bad(
                api::INVALID_PARAMETER,
                format!("Invalid certificate: {details}; download this number's certificate from WhatsApp Manager"),
            ),
            "cert_expired" => ApiError::bad(
                api::INVALID_PARAMETER,
                format!("Certificate expired: {details}; download a new certificate from WhatsApp Manager"),
            ),
            "pin_required" => ApiError::bad(api::MISSING_PARAMETER, details),
            "pin_mismatch" => ApiError::bad(api::INVALID_PARAMETER, "Two-step verification PIN mismatch"),
            "too_soon" => ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                api::TOO_MANY_REQUESTS,
                format!("Too many requests: {details}"),
            ),
            _ => ApiError::internal(format!("WhatsApp servers answered {status}: {v}")),
        });
    }
    ctx.db.set_setting("pending_number", &number).await?;
    tracing::info!(number = %number, method = %method, "registration code requested");
    Ok(api::ok(StatusCode::ACCEPTED, json!({"account": [{"vname": ""}]})))
}

/// Asks WhatsApp's servers whether another deployment has taken the number.
async fn still_registered(ctx: &NodeCtx, number: &str, settings: &Settings) -> Result<bool, ApiError> {
    let url = format!("http://{}/v1/register/check", ctx.cfg.gateway);
    let resp = ctx
        .http
        .post(url)
        .json(&json!({"number": number, "deployment": settings.deployment_id}))
        .send()
        .await
        .map_err(|e| ApiError::not_ready(format!("Cannot reach WhatsApp servers: {e}")))?;
    let v: serde_json::Value = resp.json().await.map_err(ApiError::internal)?;
    Ok(v["current"].as_bool().unwrap_or(false))
}

#[derive(Deserialize)]
pub struct VerifyRequest {
    code: Option<String>,
}

/// `POST /v1/account/verify`: a wrong code leaves the number unregistered
/// (the code stays valid for its remaining tries); the right one registers
/// it and records when.
pub async fn post_verify(State(ctx): State<Arc<NodeCtx>>, Json(r): Json<VerifyRequest>) -> ApiResult {
    require_master(&ctx)?;
    let code = require(&r.code, "code")?;
    let Some(number) = ctx.db.get_setting("pending_number").await?.filter(|n| !n.is_empty()) else {
        return Err(ApiError::bad(api::INVALID_PARAMETER, "No registration is pending: request a code first"));
    };
    let settings = ctx.db.settings().await?;
    let url = format!("http://{}/v1/register/verify", ctx.cfg.gateway);
    let resp = ctx
        .http
        .post(url)
        .json(&json!({"number": number, "code": code, "deployment": settings.deployment_id}))
        .send()
        .await
        .map_err(|e| ApiError::not_ready(format!("Cannot reach WhatsApp servers: {e}")))?;
    if !resp.status().is_success() {
        let v: serde_json::Value = resp.json().await.unwrap_or_default();
        let details = match (v["error"].as_str(), v["tries_left"].as_u64()) {
            (Some("invalid_code"), Some(0)) => {
                // The code is void: the next attempt needs a new code.
                ctx.db.set_setting("pending_number", "").await?;
                "Invalid verification code: too many wrong codes, request a new code".to_string()
            }
            (Some("invalid_code"), Some(n)) => format!("Invalid verification code: {n} tries left"),
            _ => "Invalid verification code: no code is pending, request a new code".to_string(),
        };
        return Err(ApiError::bad(api::INVALID_PARAMETER, details));
    }
    ctx.db.set_setting("registered_at_ms", &now_ms().to_string()).await?;
    ctx.db.set_setting("registered_number", &number).await?;
    ctx.db.set_setting("registration_lost", "").await?;
    ctx.db.set_setting("pending_number", "").await?;
    tracing::info!(number = %number, "number registered");
    ctx.wake.notify_one();
    Ok(api::ok(StatusCode::CREATED, json!({})))
}

/// Emulator-only, on the control port: the registration as the database
/// holds it, so that tests can read when the number was registered.
pub async fn get_account(State(ctx): State<Arc<NodeCtx>>) -> ApiResult {
    let s = ctx.db.settings().await?;
    let pending = ctx.db.get_setting("pending_number").await?.filter(|n| !n.is_empty());
    let at = s.registered_at_ms.and_then(|ms| jiff::Timestamp::from_millisecond(ms).ok()).map(crate::instant::rfc3339);
    Ok(api::ok(
        StatusCode::OK,
        json!({"account": {"number": s.registered_number, "registered_at": at, "registered_at_ms": s.registered_at_ms, "pending_number": pending, "shards": s.shards}}),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn fills_shards_from_healthy_in_order() {
        let m = assign(1, &BTreeMap::new(), &ids(&["a", "b"]));
        assert_eq!(m, BTreeMap::from([(0, "a".to_string())]));
        let m = assign(4, &BTreeMap::new(), &ids(&["a", "b", "c"]));
        assert_eq!(m.len(), 3);
        assert!(!m.contains_key(&3));
    }

    #[test]
    fn keeps_healthy_holders_and_replaces_failed_ones() {
        let current = BTreeMap::from([(0, "a".to_string()), (1, "b".to_string())]);
        let m = assign(2, &current, &ids(&["c", "b"]));
        assert_eq!(m, BTreeMap::from([(0, "c".to_string()), (1, "b".to_string())]));
    }

    #[test]
    fn shrinking_drops_high_shards() {
        let current = BTreeMap::from([(0, "a".to_string()), (1, "b".to_string()), (2, "c".to_string())]);
        let m = assign(1, &current, &ids(&["a", "b", "c"]));
        assert_eq!(m, BTreeMap::from([(0, "a".to_string())]));
    }

    #[test]
    fn cert_required_from_2_45() {
        assert!(!cert_required("2.43.1"));
        assert!(cert_required("2.45.2"));
        assert!(cert_required("2.53.2"));
    }

    #[test]
    fn a_node_never_holds_two_shards() {
        let current = BTreeMap::from([(0, "a".to_string()), (1, "a".to_string())]);
        let m = assign(2, &current, &ids(&["a", "b"]));
        assert_eq!(m, BTreeMap::from([(0, "a".to_string()), (1, "b".to_string())]));
    }
}
