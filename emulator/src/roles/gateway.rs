//! Stand-in for WhatsApp's servers. Coreapps and the primary master hold a
//! long-lived session (`GET /v1/session`, a stream of JSON lines); the server
//! enforces one client deployment per phone number and "sends" registration
//! codes, which tests read from `/admin/codes/<number>`.

use std::collections::{HashMap, HashSet};
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use rand::Rng;
use serde::{Deserialize, Serialize};
use serde_json::json;
use tokio::sync::oneshot;

use crate::Error;

pub const CONFLICT: &str = "Conflict: Detected multiple instances that share the same number";
/// Interval of keep-alive lines on a session; clients treat three missed
/// keep-alives as a lost connection.
pub const PING_INTERVAL: Duration = Duration::from_millis(500);

#[derive(Debug, Clone, Serialize)]
struct Conn {
    id: u64,
    number: String,
    deployment: String,
    node: String,
    version: String,
    since: String,
}

#[derive(Default)]
struct NumberState {
    owner: Option<String>,
    /// Deployments displaced by another one: refused until they register again.
    revoked: HashSet<String>,
    /// Two deployments were online at once: every session of the owner is told
    /// about the conflict until the number is registered again.
    contested: bool,
}

#[derive(Default)]
struct Inner {
    next_id: u64,
    numbers: HashMap<String, NumberState>,
    conns: HashMap<u64, (Conn, oneshot::Sender<&'static str>)>,
    codes: HashMap<String, (String, String)>,
}

#[derive(Clone, Default)]
struct Gw(Arc<Mutex<Inner>>);

impl Inner {
    /// Kicks every live session of `deployment` for `number`; returns how many.
    fn kick(&mut self, number: &str, deployment: &str) -> usize {
        let ids: Vec<u64> = self
            .conns
            .iter()
            .filter(|(_, (c, _))| c.number == number && c.deployment == deployment)
            .map(|(id, _)| *id)
            .collect();
        for id in &ids {
            if let Some((_, tx)) = self.conns.remove(id) {
                let _ = tx.send("conflict");
            }
        }
        ids.len()
    }
}

pub fn digits(s: &str) -> String {
    s.chars().filter(char::is_ascii_digit).collect()
}

#[derive(Deserialize)]
struct SessionQuery {
    number: String,
    deployment: String,
    node: String,
    #[serde(default)]
    version: String,
}

struct Guard {
    gw: Gw,
    id: u64,
}

impl Drop for Guard {
    fn drop(&mut self) {
        let mut inner = self.gw.0.lock().expect("gateway state");
        if let Some((c, _)) = inner.conns.remove(&self.id) {
            tracing::info!(number = %c.number, node = %c.node, "session closed");
        }
    }
}

struct Session {
    first: Option<Bytes>,
    kick: oneshot::Receiver<&'static str>,
    ticker: tokio::time::Interval,
    done: bool,
    _guard: Guard,
}

fn line(v: serde_json::Value) -> Bytes {
    let mut s = v.to_string();
    s.push('\n');
    Bytes::from(s)
}

async fn session(State(gw): State<Gw>, Query(q): Query<SessionQuery>) -> Response {
    let number = digits(&q.number);
    let (tx, rx) = oneshot::channel();
    let (id, conflict) = {
        let mut inner = gw.0.lock().expect("gateway state");
        let ns = inner.numbers.entry(number.clone()).or_default();
        if ns.revoked.contains(&q.deployment) {
            tracing::warn!(number = %number, deployment = %q.deployment, node = %q.node, "{CONFLICT}: refusing a displaced deployment");
            return (StatusCode::CONFLICT, Json(json!({"error": "conflict", "details": CONFLICT}))).into_response();
        }
        let previous = ns.owner.replace(q.deployment.clone()).filter(|o| *o != q.deployment);
        if let Some(prev) = previous {
            inner.numbers.get_mut(&number).expect("entry").revoked.insert(prev.clone());
            // Only a displaced deployment that is still online is a conflict;
            // one that went away long ago has simply been replaced.
            if inner.kick(&number, &prev) > 0 {
                inner.numbers.get_mut(&number).expect("entry").contested = true;
                tracing::warn!(number = %number, kicked = %prev, by = %q.deployment, "{CONFLICT}");
            }
        }
        let conflict = inner.numbers.get(&number).is_some_and(|ns| ns.contested);
        inner.next_id += 1;
        let id = inner.next_id;
        let conn = Conn {
            id,
            number: number.clone(),
            deployment: q.deployment.clone(),
            node: q.node.clone(),
            version: q.version.clone(),
            since: chrono::Utc::now().to_rfc3339(),
        };
        inner.conns.insert(id, (conn, tx));
        (id, conflict)
    };
    tracing::info!(number = %number, node = %q.node, deployment = %q.deployment, "session open");
    let state = Session {
        first: Some(line(json!({"event": "connected", "conflict": conflict}))),
        kick: rx,
        ticker: tokio::time::interval(PING_INTERVAL),
        done: false,
        _guard: Guard { gw: gw.clone(), id },
    };
    let stream = futures::stream::unfold(state, |mut st| async move {
        if st.done {
            return None;
        }
        if let Some(first) = st.first.take() {
            return Some((Ok::<_, Infallible>(first), st));
        }
        tokio::select! {
            reason = &mut st.kick => {
                st.done = true;
                let reason = reason.unwrap_or("closed");
                Some((Ok(line(json!({"event": "kicked", "reason": reason}))), st))
            }
            _ = st.ticker.tick() => Some((Ok(line(json!({"event": "ping"}))), st)),
        }
    });
    Response::builder()
        .header("content-type", "application/x-ndjson")
        .body(Body::from_stream(stream))
        .expect("response")
}

#[derive(Deserialize)]
struct CodeRequest {
    cc: String,
    phone_number: String,
    #[serde(default)]
    method: String,
    deployment: String,
}

async fn request_code(State(gw): State<Gw>, Json(r): Json<CodeRequest>) -> Response {
    let number = digits(&format!("{}{}", r.cc, r.phone_number));
    let code: String = {
        let mut rng = rand::rng();
        (0..6).map(|_| char::from(b'0' + rng.random_range(0..10u8))).collect()
    };
    tracing::info!(number = %number, method = %r.method, "registration code sent");
    gw.0.lock().expect("gateway state").codes.insert(number, (code, r.deployment));
    (StatusCode::ACCEPTED, Json(json!({"sent": true}))).into_response()
}

#[derive(Deserialize)]
struct VerifyRequest {
    number: String,
    code: String,
    deployment: String,
}

async fn verify_code(State(gw): State<Gw>, Json(r): Json<VerifyRequest>) -> Response {
    let number = digits(&r.number);
    let mut inner = gw.0.lock().expect("gateway state");
    let ok = matches!(inner.codes.get(&number), Some((c, d)) if *c == r.code.trim() && *d == r.deployment);
    if !ok {
        return (StatusCode::BAD_REQUEST, Json(json!({"error": "invalid code"}))).into_response();
    }
    inner.codes.remove(&number);
    // Registering moves the number to this deployment: a previous one is
    // kicked off and fails from now on.
    let previous = {
        let ns = inner.numbers.entry(number.clone()).or_default();
        ns.revoked.remove(&r.deployment);
        ns.contested = false;
        ns.owner.replace(r.deployment.clone()).filter(|o| *o != r.deployment)
    };
    if let Some(prev) = previous {
        inner.numbers.get_mut(&number).expect("entry").revoked.insert(prev.clone());
        if inner.kick(&number, &prev) > 0 {
            inner.numbers.get_mut(&number).expect("entry").contested = true;
            tracing::warn!(number = %number, kicked = %prev, by = %r.deployment, "{CONFLICT}");
        }
    }
    tracing::info!(number = %number, deployment = %r.deployment, "number registered");
    (StatusCode::OK, Json(json!({"registered": true}))).into_response()
}

#[derive(Deserialize)]
struct CheckRequest {
    number: String,
    deployment: String,
}

/// Whether the number is (still) registered to this deployment: false once
/// another deployment has displaced it.
async fn check(State(gw): State<Gw>, Json(r): Json<CheckRequest>) -> Response {
    let inner = gw.0.lock().expect("gateway state");
    let current = match inner.numbers.get(&digits(&r.number)) {
        None => true,
        Some(ns) => !ns.revoked.contains(&r.deployment) && ns.owner.as_ref().is_none_or(|o| *o == r.deployment),
    };
    Json(json!({"current": current})).into_response()
}

async fn admin_code(State(gw): State<Gw>, Path(number): Path<String>) -> Response {
    let inner = gw.0.lock().expect("gateway state");
    match inner.codes.get(&digits(&number)) {
        Some((code, _)) => Json(json!({"code": code})).into_response(),
        None => (StatusCode::NOT_FOUND, Json(json!({"error": "no code sent to this number"}))).into_response(),
    }
}

async fn admin_connections(State(gw): State<Gw>) -> Response {
    let inner = gw.0.lock().expect("gateway state");
    let mut conns: Vec<&Conn> = inner.conns.values().map(|(c, _)| c).collect();
    conns.sort_by_key(|c| c.id);
    Json(json!({"connections": conns})).into_response()
}

async fn admin_numbers(State(gw): State<Gw>) -> Response {
    let inner = gw.0.lock().expect("gateway state");
    let numbers: serde_json::Map<String, serde_json::Value> = inner
        .numbers
        .iter()
        .map(|(n, s)| {
            let mut revoked: Vec<&String> = s.revoked.iter().collect();
            revoked.sort();
            (n.clone(), json!({"owner": s.owner, "revoked": revoked, "contested": s.contested}))
        })
        .collect();
    Json(json!({"numbers": numbers})).into_response()
}

pub fn router() -> Router {
    Router::new()
        .route("/v1/session", get(session))
        .route("/v1/register/request", post(request_code))
        .route("/v1/register/verify", post(verify_code))
        .route("/v1/register/check", post(check))
        .route("/admin/codes/{number}", get(admin_code))
        .route("/admin/connections", get(admin_connections))
        .route("/admin/numbers", get(admin_numbers))
        .route("/healthz", get(|| async { "ok" }))
        .with_state(Gw::default())
}

pub async fn run(listen: &str) -> Result<(), Error> {
    let listener = tokio::net::TcpListener::bind(listen).await?;
    tracing::info!(listen = %listener.local_addr()?, "gateway listening");
    axum::serve(listener, router()).with_graceful_shutdown(crate::shutdown_signal()).await?;
    Ok(())
}
