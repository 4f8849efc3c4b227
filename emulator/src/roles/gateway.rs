//! Stand-in for WhatsApp's servers. Coreapps and the primary master hold a
//! long-lived session (`GET /v1/session`, a stream of JSON lines); the server
//! enforces one client deployment per phone number, "sends" registration
//! codes, which tests read from `/admin/codes/<number>`, issues and judges the
//! numbers' certificates, and bans a number on a set-shards request with an
//! expired certificate. It also holds what WhatsApp keeps per number for
//! registration: the two-step PIN, the time of the last code request (rate
//! limit) and the wrong guesses left on the pending code.

use std::collections::{HashMap, HashSet};
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use jiff::Timestamp;
use rand::Rng;
use serde::{Deserialize, Serialize};
use serde_json::json;
use tokio::sync::oneshot;

use crate::{Error, instant};

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
    /// Why the number is banned, until `DELETE /admin/bans/<number>`.
    banned: Option<String>,
}

/// Wrong codes a pending code survives; the next wrong one voids it.
pub const CODE_TRIES: u32 = 3;

/// A code "sent" to a number, pending verification.
struct PendingCode {
    code: String,
    deployment: String,
    method: String,
    /// Wrong guesses still allowed before the code is voided.
    tries_left: u32,
}

#[derive(Default)]
struct Inner {
    next_id: u64,
    numbers: HashMap<String, NumberState>,
    conns: HashMap<u64, (Conn, oneshot::Sender<&'static str>)>,
    codes: HashMap<String, PendingCode>,
    /// When a code was last sent to each number, for the rate limit.
    last_code: HashMap<String, Instant>,
    /// Two-step verification PINs, per number (set with `/admin/pins`).
    pins: HashMap<String, String>,
    /// Minimum time between two code requests for one number.
    code_retry: Duration,
}

#[derive(Clone, Default)]
struct Gw(Arc<Mutex<Inner>>);

/// Default of `WA_EMULATOR_CODE_RETRY_SECONDS`: WhatsApp's real wait is not
/// documented; a minute is of the order its servers answer with.
pub const DEFAULT_CODE_RETRY_SECONDS: u64 = 60;

impl Inner {
    /// Kicks every live session of `deployment` for `number`; returns how many.
    fn kick(&mut self, number: &str, deployment: &str) -> usize {
        self.kick_where(|c| c.number == number && c.deployment == deployment, "conflict")
    }

    fn kick_where(&mut self, f: impl Fn(&Conn) -> bool, reason: &'static str) -> usize {
        let ids: Vec<u64> = self.conns.iter().filter(|(_, (c, _))| f(c)).map(|(id, _)| *id).collect();
        for id in &ids {
            if let Some((_, tx)) = self.conns.remove(id) {
                let _ = tx.send(reason);
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
        if let Some(why) = &ns.banned {
            tracing::warn!(number = %number, node = %q.node, "refusing a session: the number is banned");
            return (StatusCode::FORBIDDEN, Json(json!({"error": "banned", "details": why}))).into_response();
        }
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
            since: instant::rfc3339(Timestamp::now()),
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
    #[serde(default)]
    cert: String,
    #[serde(default)]
    pin: Option<String>,
}

fn refuse(status: StatusCode, error: &str, details: String) -> Response {
    (status, Json(json!({"error": error, "details": details}))).into_response()
}

/// Sends a registration code, after judging the certificate, the two-step
/// PIN and the rate limit of code requests, as WhatsApp's servers do.
async fn request_code(State(gw): State<Gw>, Json(r): Json<CodeRequest>) -> Response {
    let number = digits(&format!("{}{}", r.cc, r.phone_number));
    let mut inner = gw.0.lock().expect("gateway state");
    if let Some(why) = inner.numbers.get(&number).and_then(|ns| ns.banned.clone()) {
        return refuse(StatusCode::FORBIDDEN, "banned", why);
    }
    match check_cert(&number, &r.cert, Timestamp::now()) {
        CertCheck::Valid => {}
        CertCheck::Wrong => {
            tracing::warn!(number = %number, "code request with a certificate not issued for this number");
            return refuse(
                StatusCode::BAD_REQUEST,
                "cert_wrong",
                format!("the certificate was not issued for +{number}"),
            );
        }
        CertCheck::Expired => {
            tracing::warn!(number = %number, "code request with an expired certificate");
            return refuse(
                StatusCode::BAD_REQUEST,
                "cert_expired",
                format!("the certificate of +{number} has expired"),
            );
        }
    }
    if let Some(pin) = inner.pins.get(&number) {
        match r.pin.as_deref().map(str::trim).filter(|p| !p.is_empty()) {
            None => {
                return refuse(
                    StatusCode::BAD_REQUEST,
                    "pin_required",
                    format!("two-step verification is enabled for +{number}: pin is required"),
                );
            }
            Some(p) if p != pin => {
                tracing::warn!(number = %number, "code request with a wrong two-step PIN");
                return refuse(StatusCode::BAD_REQUEST, "pin_mismatch", "two-step verification PIN mismatch".into());
            }
            Some(_) => {}
        }
    }
    let retry = inner.code_retry;
    if let Some(last) = inner.last_code.get(&number)
        && last.elapsed() < retry
    {
        let wait = (retry - last.elapsed()).as_secs() + 1;
        return (
            StatusCode::TOO_MANY_REQUESTS,
            Json(json!({
                "error": "too_soon",
                "details": format!("a code was sent to +{number} less than {}s ago: wait {wait}s before requesting another", retry.as_secs()),
                "retry_after": wait,
            })),
        )
            .into_response();
    }
    let code: String = {
        let mut rng = rand::rng();
        (0..6).map(|_| char::from(b'0' + rng.random_range(0..10u8))).collect()
    };
    tracing::info!(number = %number, method = %r.method, "registration code sent");
    inner.last_code.insert(number.clone(), Instant::now());
    let pending = PendingCode { code, deployment: r.deployment, method: r.method, tries_left: CODE_TRIES };
    inner.codes.insert(number, pending);
    (StatusCode::ACCEPTED, Json(json!({"sent": true}))).into_response()
}

#[derive(Deserialize)]
struct VerifyRequest {
    number: String,
    code: String,
    deployment: String,
}

/// Checks a code. A wrong one leaves the number as it was and costs one of
/// the code's tries; when none is left the code is voided.
async fn verify_code(State(gw): State<Gw>, Json(r): Json<VerifyRequest>) -> Response {
    let number = digits(&r.number);
    let mut inner = gw.0.lock().expect("gateway state");
    let Some(pending) = inner.codes.get_mut(&number).filter(|p| p.deployment == r.deployment) else {
        return refuse(StatusCode::BAD_REQUEST, "no_code", format!("no code is pending for +{number}: request one"));
    };
    if pending.code != r.code.trim() {
        pending.tries_left = pending.tries_left.saturating_sub(1);
        let left = pending.tries_left;
        if left == 0 {
            inner.codes.remove(&number);
        }
        tracing::warn!(number = %number, tries_left = left, "wrong registration code");
        return (StatusCode::BAD_REQUEST, Json(json!({"error": "invalid_code", "tries_left": left}))).into_response();
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
    let ns = inner.numbers.get(&digits(&r.number));
    let current = match ns {
        None => true,
        Some(ns) => !ns.revoked.contains(&r.deployment) && ns.owner.as_ref().is_none_or(|o| *o == r.deployment),
    };
    Json(json!({"current": current, "banned": ns.and_then(|ns| ns.banned.clone())})).into_response()
}

async fn admin_code(State(gw): State<Gw>, Path(number): Path<String>) -> Response {
    let inner = gw.0.lock().expect("gateway state");
    match inner.codes.get(&digits(&number)) {
        Some(p) => Json(json!({"code": p.code, "method": p.method, "tries_left": p.tries_left})).into_response(),
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
            (n.clone(), json!({"owner": s.owner, "revoked": revoked, "contested": s.contested, "banned": s.banned}))
        })
        .collect();
    Json(json!({"numbers": numbers})).into_response()
}

// ---- certificates --------------------------------------------------------
//
// A number's certificate (the `cert` of registration and set-shards) is
// issued by WhatsApp with an expiry. Here it is base64 of
// `{"number","expires_at","sig"}`, signed with a fixed key so that any
// gateway, restarted or not, recognises the certificates of any other.

const CERT_KEY: &[u8] = b"whatsapp-emulator-gateway-certificates";

#[derive(Serialize, Deserialize)]
struct CertBody {
    number: String,
    expires_at: String,
    sig: String,
}

fn cert_sig(number: &str, expires_at: &str) -> String {
    use hmac::Mac;
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(CERT_KEY).expect("HMAC takes any key length");
    mac.update(number.as_bytes());
    mac.update(b"|");
    mac.update(expires_at.as_bytes());
    mac.finalize().into_bytes().iter().map(|b| format!("{b:02x}")).collect()
}

/// A certificate for `number` (any format; digits are kept) valid until `expires_at`.
pub fn issue_cert(number: &str, expires_at: Timestamp) -> String {
    use base64::Engine as _;
    let number = digits(number);
    // Whole seconds (a fraction is cut, not rounded) and `Z`.
    let expires_at = expires_at.strftime("%Y-%m-%dT%H:%M:%SZ").to_string();
    let body = CertBody { sig: cert_sig(&number, &expires_at), number, expires_at };
    base64::engine::general_purpose::STANDARD.encode(serde_json::to_vec(&body).expect("certificate serialises"))
}

#[derive(Debug, PartialEq, Eq)]
pub enum CertCheck {
    Valid,
    Expired,
    Wrong,
}

/// Whether `cert` was issued for `number` and is still valid at `now`.
pub fn check_cert(number: &str, cert: &str, now: Timestamp) -> CertCheck {
    use base64::Engine as _;
    let Some(body) = base64::engine::general_purpose::STANDARD
        .decode(cert.trim())
        .ok()
        .and_then(|raw| serde_json::from_slice::<CertBody>(&raw).ok())
    else {
        return CertCheck::Wrong;
    };
    if body.number != digits(number) || body.sig != cert_sig(&body.number, &body.expires_at) {
        return CertCheck::Wrong;
    }
    match instant::parse_rfc3339(&body.expires_at) {
        Ok(t) if t > now => CertCheck::Valid,
        Ok(_) => CertCheck::Expired,
        Err(_) => CertCheck::Wrong,
    }
}

#[derive(Deserialize)]
struct ShardsCheck {
    number: String,
    #[serde(default)]
    deployment: String,
    cert: String,
}

/// Judges the certificate of a set-shards request. An expired certificate
/// gets the number banned: every session is kicked and refused from now on.
async fn shards_cert(State(gw): State<Gw>, Json(r): Json<ShardsCheck>) -> Response {
    let number = digits(&r.number);
    let result = match check_cert(&number, &r.cert, Timestamp::now()) {
        CertCheck::Valid => "valid",
        CertCheck::Wrong => {
            tracing::warn!(number = %number, deployment = %r.deployment, "set shards with a wrong certificate: logging the client off");
            "wrong"
        }
        CertCheck::Expired => {
            let why =
                format!("Account banned: set shards was called with an expired certificate; WhatsApp banned +{number}");
            tracing::error!(number = %number, deployment = %r.deployment, "{why}");
            let mut inner = gw.0.lock().expect("gateway state");
            inner.numbers.entry(number.clone()).or_default().banned = Some(why);
            inner.kick_where(|c| c.number == number, "banned");
            "banned"
        }
    };
    Json(json!({"result": result})).into_response()
}

#[derive(Deserialize)]
struct CertRequest {
    number: String,
    /// RFC 3339; wins over `valid_days`.
    expires_at: Option<String>,
    /// Days from now; negative for an already expired certificate. Default 365.
    valid_days: Option<i64>,
}

/// Emulator-only: issues a certificate for a number, as WhatsApp Manager would.
async fn admin_certs(Json(r): Json<CertRequest>) -> Response {
    let expires_at = match &r.expires_at {
        Some(t) => match instant::parse_rfc3339(t) {
            Ok(t) => t,
            Err(e) => {
                return (StatusCode::BAD_REQUEST, Json(json!({"error": format!("expires_at: {e}")}))).into_response();
            }
        },
        None => instant::days_after(Timestamp::now(), r.valid_days.unwrap_or(365)),
    };
    let number = digits(&r.number);
    if number.is_empty() {
        return (StatusCode::BAD_REQUEST, Json(json!({"error": "number is required"}))).into_response();
    }
    let cert = issue_cert(&number, expires_at);
    Json(json!({"number": number, "expires_at": instant::rfc3339(expires_at), "cert": cert})).into_response()
}

/// Emulator-only: lifts a ban (WhatsApp accepting an appeal).
async fn admin_unban(State(gw): State<Gw>, Path(number): Path<String>) -> Response {
    let number = digits(&number);
    let mut inner = gw.0.lock().expect("gateway state");
    let lifted = inner.numbers.get_mut(&number).and_then(|ns| ns.banned.take()).is_some();
    if lifted {
        tracing::info!(number = %number, "ban lifted");
    }
    Json(json!({"number": number, "lifted": lifted})).into_response()
}

#[derive(Deserialize)]
struct PinRequest {
    pin: String,
}

/// Emulator-only: enables two-step verification for a number with a PIN, as
/// the number's owner would have done on another client.
async fn admin_set_pin(State(gw): State<Gw>, Path(number): Path<String>, Json(r): Json<PinRequest>) -> Response {
    let number = digits(&number);
    let pin = r.pin.trim().to_string();
    if number.is_empty() || pin.len() != 6 || !pin.chars().all(|c| c.is_ascii_digit()) {
        return (StatusCode::BAD_REQUEST, Json(json!({"error": "a number and a 6-digit pin are required"})))
            .into_response();
    }
    gw.0.lock().expect("gateway state").pins.insert(number.clone(), pin);
    Json(json!({"number": number, "two_step": true})).into_response()
}

/// Emulator-only: disables two-step verification for a number.
async fn admin_delete_pin(State(gw): State<Gw>, Path(number): Path<String>) -> Response {
    let number = digits(&number);
    gw.0.lock().expect("gateway state").pins.remove(&number);
    Json(json!({"number": number, "two_step": false})).into_response()
}

pub fn router(code_retry: Duration) -> Router {
    Router::new()
        .route("/v1/session", get(session))
        .route("/v1/register/request", post(request_code))
        .route("/v1/register/verify", post(verify_code))
        .route("/v1/register/check", post(check))
        .route("/v1/account/shards", post(shards_cert))
        .route("/admin/certs", post(admin_certs))
        .route("/admin/bans/{number}", axum::routing::delete(admin_unban))
        .route("/admin/codes/{number}", get(admin_code))
        .route("/admin/pins/{number}", post(admin_set_pin).delete(admin_delete_pin))
        .route("/admin/connections", get(admin_connections))
        .route("/admin/numbers", get(admin_numbers))
        .route("/healthz", get(|| async { "ok" }))
        .with_state(Gw(Arc::new(Mutex::new(Inner { code_retry, ..Default::default() }))))
}

/// `WA_EMULATOR_CODE_RETRY_SECONDS`: the wait between two code requests for
/// one number (emulator-only, so that tests stay fast).
pub fn code_retry_from_env() -> Result<Duration, Error> {
    match std::env::var("WA_EMULATOR_CODE_RETRY_SECONDS").ok().filter(|v| !v.trim().is_empty()) {
        None => Ok(Duration::from_secs(DEFAULT_CODE_RETRY_SECONDS)),
        Some(v) => v
            .trim()
            .parse()
            .map(Duration::from_secs)
            .map_err(|_| Error::Config(format!("WA_EMULATOR_CODE_RETRY_SECONDS={v} is not a number of seconds"))),
    }
}

pub async fn run(listen: &str) -> Result<(), Error> {
    let code_retry = code_retry_from_env()?;
    let listener = tokio::net::TcpListener::bind(listen).await?;
    tracing::info!(listen = %listener.local_addr()?, code_retry_seconds = code_retry.as_secs(), "gateway listening");
    axum::serve(listener, router(code_retry)).with_graceful_shutdown(crate::shutdown_signal()).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn certificates() {
        let now = Timestamp::now();
        let days = |n| instant::days_after(now, n);
        let cert = issue_cert("+1 555 000 1111", days(1));
        assert_eq!(check_cert("15550001111", &cert, now), CertCheck::Valid);
        assert_eq!(check_cert("15550002222", &cert, now), CertCheck::Wrong);
        assert_eq!(check_cert("15550001111", &cert, days(2)), CertCheck::Expired);
        assert_eq!(check_cert("15550001111", "Y2VydA==", now), CertCheck::Wrong);
        let mut forged = serde_json::from_slice::<CertBody>(
            &base64::Engine::decode(&base64::engine::general_purpose::STANDARD, &cert).unwrap(),
        )
        .unwrap();
        forged.expires_at = "2999-01-01T00:00:00Z".into();
        let forged =
            base64::Engine::encode(&base64::engine::general_purpose::STANDARD, serde_json::to_vec(&forged).unwrap());
        assert_eq!(check_cert("15550001111", &forged, now), CertCheck::Wrong);
    }
}
