//! The operator's client of the webapp's REST API.
//!
//! Two credentials, as Meta documents them: the API key the operator generated
//! (`Authorization: Apikey <key>`) for the monitoring nodes only (`/v1/health`,
//! stats, metrics), and an admin Bearer token from `POST /v1/users/login` for
//! every admin call (shards, certificates). It speaks HTTPS only, trusts the
//! CAs it is given (or skips verification when the spec says so), and bounds
//! every call.

pub mod phone;
pub mod session;

use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::health::report::{self, Health};

/// How the webapp's certificate is checked.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Trust {
    /// PEM CA certificates (one or more) that signed the webapp's certificate.
    Ca(Vec<u8>),
    /// The platform's roots and these PEM CA certificates: a publicly signed
    /// certificate is on its way while the client's own one is still served.
    CaAndSystemRoots(Vec<u8>),
    /// The platform's roots (a certificate from a public CA).
    SystemRoots,
    /// No verification at all: only when the spec asks for it.
    InsecureSkipVerify,
}

/// The client's error code for a refused call.
pub const ACCESS_DENIED: i64 = 1005;

#[derive(Debug, thiserror::Error)]
pub enum CallError {
    /// No answer: connection refused, TLS failure, timeout, DNS.
    /// `may_have_arrived`: the request may have reached the client (a timeout
    /// after the connection was made, an answer cut off), so what it asked
    /// for may have been done.
    #[error("the webapp at {url} cannot be reached: {reason}")]
    Unreachable { url: String, reason: String, may_have_arrived: bool },
    /// The webapp answered with an error status.
    #[error("the webapp answered {status} to {what}: {details}")]
    Status { what: &'static str, status: u16, code: Option<i64>, details: String },
    #[error("the webapp's answer to {what} cannot be read: {reason}")]
    Malformed { what: &'static str, reason: String },
    #[error("the webapp client cannot be built: {0}")]
    Setup(String),
}

impl CallError {
    /// The request may have been carried out although no answer says so.
    pub fn outcome_unknown(&self) -> bool {
        matches!(self, CallError::Unreachable { may_have_arrived: true, .. })
    }

    /// Failures the client itself says to retry: 403 "temporarily unavailable",
    /// 1011 "Service not ready", 1017 "Not Primary Master", 1018 "Not Primary Coreapp".
    /// A 403 with 1005 "Access denied" is a refusal (a banned number answers
    /// so), never retried.
    pub fn is_retryable(&self) -> bool {
        match self {
            CallError::Status { status, code, .. } => {
                (*status == 403 && *code != Some(ACCESS_DENIED)) || matches!(code, Some(1011) | Some(1017) | Some(1018))
            }
            CallError::Unreachable { .. } => true,
            _ => false,
        }
    }

    /// The client judged what was sent and refused it (a wrong password,
    /// damaged data, a certificate it does not take): a 4xx answer that is
    /// neither a lost session (401), a timeout (408), a rate limit (429) nor
    /// a "retry" (see [`CallError::is_retryable`]). Sending the same again
    /// gets the same answer.
    pub fn is_refusal(&self) -> bool {
        matches!(self, CallError::Status { status: 400..=499, .. })
            && !matches!(self, CallError::Status { status: 401 | 408 | 429, .. })
            && !self.is_retryable()
    }
}

/// HTTP clients, one per trust setting and timeout, shared by the probes and
/// the reconciles so that connections are pooled. A client nobody asked for
/// in [`Clients::UNUSED_FOR`] is dropped: its number is gone, or its CA or
/// timeout changed (each number whose webapp has a CA of its own has a client
/// of its own).
#[derive(Default)]
pub struct Clients(std::sync::Mutex<Pool>);

#[derive(Default)]
struct Pool {
    clients: std::collections::HashMap<(Trust, Option<String>, Duration), (reqwest::Client, Instant)>,
    swept: Option<Instant>,
}

impl Clients {
    /// Longer than any number goes without a call to its webapp: an hour
    /// between health probes at most, and an admin session looked at every
    /// hour while health is not polled.
    const UNUSED_FOR: Duration = Duration::from_secs(3 * 3600);
    /// How often the clients are looked over for those unused.
    const SWEEP_EVERY: Duration = Duration::from_secs(600);

    /// A client for `trust` that takes a certificate made for `name` (see
    /// [`http_client`]).
    pub fn get(&self, trust: &Trust, name: Option<&str>, timeout: Duration) -> Result<reqwest::Client, CallError> {
        self.get_at(trust, name, timeout, Instant::now())
    }

    fn get_at(
        &self,
        trust: &Trust,
        name: Option<&str>,
        timeout: Duration,
        now: Instant,
    ) -> Result<reqwest::Client, CallError> {
        let mut pool = self.0.lock().expect("client pool lock");
        if pool.swept.is_none_or(|at| now.saturating_duration_since(at) >= Self::SWEEP_EVERY) {
            pool.clients.retain(|_, (_, used)| now.saturating_duration_since(*used) < Self::UNUSED_FOR);
            pool.swept = Some(now);
        }
        let key = (trust.clone(), name.map(String::from), timeout);
        if let Some((client, used)) = pool.clients.get_mut(&key) {
            *used = now;
            return Ok(client.clone());
        }
        let client = http_client(trust, name, timeout)?;
        pool.clients.insert(key, (client.clone(), now));
        Ok(client)
    }
}

/// Builds a client for one trust setting; cheap enough to keep one per number.
/// With `name`, the webapp's certificate must be made for that name rather
/// than for the host in the URL: the webapp is reached through its Service,
/// and its certificate is made for `spec.webapp.serverName`.
pub fn http_client(trust: &Trust, name: Option<&str>, timeout: Duration) -> Result<reqwest::Client, CallError> {
    reqwest::Client::builder()
        .use_preconfigured_tls(tls_config(trust, name)?)
        .pool_idle_timeout(IDLE_CONNECTION)
        .dns_resolver(std::sync::Arc::new(BoundedResolver { timeout: timeout / 2 }))
        .timeout(timeout)
        // Shorter than the whole request's, so that a connection that never
        // comes is told (a connect error: the request never left) from a
        // request that got no answer (it may have arrived).
        .connect_timeout(timeout * 3 / 4)
        .https_only(true)
        .user_agent(concat!("whatsapp-operator/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| CallError::Setup(e.to_string()))
}

/// How long a connection to a webapp stays open unused. A probe's calls
/// (health, settings, an admin login) come moments apart, and probes 30 s
/// apart by default: a connection kept from one probe to the next holds 40 KB
/// of buffers (rustls' and hyper's, measured with 200 idle connections) for
/// every number, more than all else the operator keeps of one. A probe then
/// opens a connection of its own, its TLS session resumed where the webapp
/// allows it ([`resumed_sessions`]).
pub const IDLE_CONNECTION: Duration = Duration::from_secs(3);

/// TLS sessions a client keeps for resumption, by the hosts it talks to: a
/// client that trusts a number's own CA talks to that number's webapp alone.
/// rustls keeps 256 by default, its table made at once: 15 KB a client, and
/// a client for every number.
fn resumed_sessions(trust: &Trust) -> usize {
    match trust {
        Trust::Ca(_) | Trust::CaAndSystemRoots(_) => 4,
        Trust::SystemRoots | Trust::InsecureSkipVerify => 256,
    }
}

/// What reqwest would build for `trust`, with a session cache sized for
/// the client's hosts ([`resumed_sessions`]).
fn tls_config(trust: &Trust, name: Option<&str>) -> Result<rustls::ClientConfig, CallError> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;

    let setup = |e: &dyn std::fmt::Display| CallError::Setup(e.to_string());
    // One provider for every client: each would otherwise keep a copy of
    // its lists of cipher suites and key exchanges.
    static PROVIDER: std::sync::LazyLock<std::sync::Arc<rustls::crypto::CryptoProvider>> =
        std::sync::LazyLock::new(|| std::sync::Arc::new(rustls::crypto::ring::default_provider()));
    let provider = PROVIDER.clone();
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| setup(&e))?;
    let mut roots = rustls::RootCertStore::empty();
    let (pem, system) = match trust {
        Trust::Ca(pem) => (Some(pem), false),
        Trust::CaAndSystemRoots(pem) => (Some(pem), true),
        Trust::SystemRoots => (None, true),
        Trust::InsecureSkipVerify => (None, false),
    };
    if system {
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    }
    for cert in CertificateDer::pem_slice_iter(pem.map(Vec::as_slice).unwrap_or_default()) {
        roots.add(cert.map_err(|e| setup(&e))?).map_err(|e| setup(&e))?;
    }
    let algorithms = provider.signature_verification_algorithms;
    let custom = |check| {
        let verifier = std::sync::Arc::new(Verifier { algorithms, check });
        builder.clone().dangerous().with_custom_certificate_verifier(verifier).with_no_client_auth()
    };
    let mut config = match (trust, name) {
        (Trust::InsecureSkipVerify, _) => custom(None),
        (_, Some(name)) => {
            let name = rustls::pki_types::ServerName::try_from(name.to_string()).map_err(|e| setup(&e))?;
            let verifier =
                rustls::client::WebPkiServerVerifier::builder_with_provider(std::sync::Arc::new(roots), provider)
                    .build()
                    .map_err(|e| setup(&e))?;
            custom(Some((verifier, name)))
        }
        (_, None) => builder.clone().with_root_certificates(roots).with_no_client_auth(),
    };
    config.resumption = rustls::client::Resumption::in_memory_sessions(resumed_sessions(trust));
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

/// A verifier the default one cannot be: `check` verifies the certificate
/// for a name other than the host dialed, or, when absent
/// (`InsecureSkipVerify`), any certificate for any name is taken. Either
/// way the handshake's signatures are checked, against the certificate sent.
#[derive(Debug)]
struct Verifier {
    algorithms: rustls::crypto::WebPkiSupportedAlgorithms,
    check: Option<(std::sync::Arc<rustls::client::WebPkiServerVerifier>, rustls::pki_types::ServerName<'static>)>,
}

impl rustls::client::danger::ServerCertVerifier for Verifier {
    fn verify_server_cert(
        &self,
        end_entity: &rustls::pki_types::CertificateDer<'_>,
        intermediates: &[rustls::pki_types::CertificateDer<'_>],
        _dialed: &rustls::pki_types::ServerName<'_>,
        ocsp_response: &[u8],
        now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        match &self.check {
            Some((verifier, name)) => verifier.verify_server_cert(end_entity, intermediates, name, ocsp_response, now),
            None => Ok(rustls::client::danger::ServerCertVerified::assertion()),
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

/// Name lookups that give up within half the request's time and say so: a
/// lookup slowed by a busy resolver then fails as a lookup, the same way
/// each time, rather than as a request that timed out, and the condition
/// that reports it does not change from one try to the next.
struct BoundedResolver {
    timeout: Duration,
}

impl reqwest::dns::Resolve for BoundedResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let timeout = self.timeout;
        Box::pin(async move {
            let host = name.as_str().to_string();
            let addrs = bounded_lookup(&host, timeout, tokio::net::lookup_host((host.as_str(), 0))).await?;
            Ok(Box::new(addrs.collect::<Vec<_>>().into_iter()) as reqwest::dns::Addrs)
        })
    }
}

/// `lookup` of `host`, given up after `timeout`; either failure says it was a lookup.
async fn bounded_lookup<T>(
    host: &str,
    timeout: Duration,
    lookup: impl std::future::Future<Output = std::io::Result<T>>,
) -> Result<T, Box<dyn std::error::Error + Send + Sync>> {
    match tokio::time::timeout(timeout, lookup).await {
        Ok(Ok(found)) => Ok(found),
        Ok(Err(e)) => Err(format!("dns lookup of {host} failed: {e}").into()),
        Err(_) => Err(format!("dns lookup of {host} timed out").into()),
    }
}

/// One webapp endpoint with its monitoring credential.
pub struct Webapp<'a> {
    pub client: &'a reqwest::Client,
    /// `https://host:port`, no trailing slash.
    pub base_url: &'a str,
    pub api_key: &'a str,
}

/// How one request authenticates.
#[derive(Clone, Copy)]
enum Auth<'a> {
    /// The API key: monitoring nodes only.
    ApiKey(&'a str),
    /// An admin session token.
    Bearer(&'a str),
    /// `POST /v1/users/login`: Basic with the admin user.
    Basic { password: &'a str },
}

impl Auth<'_> {
    fn apply(self, request: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        match self {
            Auth::ApiKey(key) => request.header(reqwest::header::AUTHORIZATION, format!("Apikey {key}")),
            Auth::Bearer(token) => request.bearer_auth(token),
            Auth::Basic { password } => request.basic_auth(session::ADMIN_USER, Some(password)),
        }
    }
}

/// An admin token as `POST /v1/users/login` returns it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Login {
    pub token: String,
    /// `expires_after`, when the answer carries a readable one.
    pub expires_after: Option<jiff::Timestamp>,
}

fn error_details(body: &[u8]) -> (Option<i64>, String) {
    let v: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    let first = v.get("errors").and_then(Value::as_array).and_then(|e| e.first());
    let code = first.and_then(|e| e.get("code")).and_then(Value::as_i64);
    let text = first
        .map(|e| {
            format!(
                "{} {}",
                e.get("title").and_then(Value::as_str).unwrap_or_default(),
                e.get("details").and_then(Value::as_str).unwrap_or_default()
            )
        })
        .unwrap_or_else(|| String::from_utf8_lossy(&body[..body.len().min(300)]).into_owned());
    (code, text.trim().to_string())
}

impl Webapp<'_> {
    async fn call(
        &self,
        what: &'static str,
        auth: Auth<'_>,
        request: reqwest::RequestBuilder,
    ) -> Result<(StatusCode, Vec<u8>), CallError> {
        let response = auth.apply(request).send().await.map_err(|e| CallError::Unreachable {
            url: self.base_url.to_string(),
            reason: describe(&e),
            may_have_arrived: !e.is_connect() && !e.is_builder(),
        })?;
        let status = response.status();
        let body = response
            .bytes()
            .await
            .map_err(|e| CallError::Unreachable {
                url: self.base_url.to_string(),
                reason: describe(&e),
                may_have_arrived: true,
            })?
            .to_vec();
        if !status.is_success() {
            let (code, details) = error_details(&body);
            return Err(CallError::Status { what, status: status.as_u16(), code, details });
        }
        Ok((status, body))
    }

    /// `GET /v1/health`, parsed, with how long it took.
    pub async fn health(&self) -> Result<(Health, Duration), CallError> {
        let started = Instant::now();
        let (_, body) = self
            .call("GET /v1/health", Auth::ApiKey(self.api_key), self.client.get(format!("{}/v1/health", self.base_url)))
            .await?;
        let health =
            report::parse(&body).map_err(|e| CallError::Malformed { what: "GET /v1/health", reason: e.to_string() })?;
        Ok((health, started.elapsed()))
    }

    /// `GET /v1/account/shards` -> `{"account":{"shards":N}}` (admin).
    pub async fn shards(&self, token: &str) -> Result<i32, CallError> {
        let (_, body) = self
            .call(
                "GET /v1/account/shards",
                Auth::Bearer(token),
                self.client.get(format!("{}/v1/account/shards", self.base_url)),
            )
            .await?;
        let v: Value = serde_json::from_slice(&body)
            .map_err(|e| CallError::Malformed { what: "GET /v1/account/shards", reason: e.to_string() })?;
        v.pointer("/account/shards")
            .or_else(|| v.pointer("/account/0/shards"))
            .and_then(Value::as_i64)
            .map(|n| n as i32)
            .ok_or_else(|| CallError::Malformed {
                what: "GET /v1/account/shards",
                reason: format!("no account.shards in {v}"),
            })
    }

    /// `POST /v1/account/shards` (admin); 201 means done.
    pub async fn set_shards(&self, token: &str, request: &ShardRequest) -> Result<(), CallError> {
        let mut body = json!({"cc": request.cc, "phone_number": request.phone_number, "shards": request.shards, "cert": request.cert});
        if let Some(pin) = &request.pin {
            body["pin"] = json!(pin);
        }
        self.call(
            "POST /v1/account/shards",
            Auth::Bearer(token),
            self.client.post(format!("{}/v1/account/shards", self.base_url)).json(&body),
        )
        .await
        .map(|_| ())
    }

    /// `POST /v1/users/login` as admin; with `new_password`, the first login
    /// that moves the account off its default password.
    pub async fn login(&self, password: &str, new_password: Option<&str>) -> Result<Login, CallError> {
        let body = match new_password {
            Some(p) => json!({ "new_password": p }),
            None => json!({}),
        };
        let (_, body) = self
            .call(
                "POST /v1/users/login",
                Auth::Basic { password },
                self.client.post(format!("{}/v1/users/login", self.base_url)).json(&body),
            )
            .await?;
        session::parse_login(&body).map_err(|reason| CallError::Malformed { what: "POST /v1/users/login", reason })
    }

    /// `GET /v1/certificates/external/ca` (admin): the CA that signed the
    /// webapp's own self-signed certificate, PEM.
    pub async fn certificate_authority(&self, token: &str) -> Result<Vec<u8>, CallError> {
        let (_, body) = self
            .call(
                "GET /v1/certificates/external/ca",
                Auth::Bearer(token),
                self.client.get(format!("{}/v1/certificates/external/ca", self.base_url)),
            )
            .await?;
        if !String::from_utf8_lossy(&body).contains("-----BEGIN CERTIFICATE-----") {
            return Err(CallError::Malformed {
                what: "GET /v1/certificates/external/ca",
                reason: "the answer holds no PEM certificate".into(),
            });
        }
        Ok(body)
    }

    /// `POST /v1/certificates/external` (admin): the PEM bundle (private key,
    /// certificate, then the chain) the webapps serve from their next start.
    pub async fn upload_certificate(&self, token: &str, pem_bundle: &[u8]) -> Result<(), CallError> {
        self.call(
            "POST /v1/certificates/external",
            Auth::Bearer(token),
            self.client
                .post(format!("{}/v1/certificates/external", self.base_url))
                .header(reqwest::header::CONTENT_TYPE, "text/plain")
                .body(pem_bundle.to_vec()),
        )
        .await
        .map(|_| ())
    }
}

impl Webapp<'_> {
    async fn admin_json(
        &self,
        what: &'static str,
        token: &str,
        request: reqwest::RequestBuilder,
    ) -> Result<(StatusCode, Value), CallError> {
        let (status, body) = self.call(what, Auth::Bearer(token), request).await?;
        let value = if body.is_empty() { Value::Null } else { serde_json::from_slice(&body).unwrap_or(Value::Null) };
        Ok((status, value))
    }

    /// `POST /v1/account`: 201 means registered already, 202 that a code was sent.
    pub async fn request_code(&self, token: &str, body: &Value) -> Result<StatusCode, CallError> {
        let url = format!("{}/v1/account", self.base_url);
        Ok(self.admin_json("POST /v1/account", token, self.client.post(url).json(body)).await?.0)
    }

    /// `POST /v1/account/verify {"code"}`.
    pub async fn verify_code(&self, token: &str, code: &str) -> Result<(), CallError> {
        let url = format!("{}/v1/account/verify", self.base_url);
        self.admin_json("POST /v1/account/verify", token, self.client.post(url).json(&json!({"code": code})))
            .await
            .map(|_| ())
    }

    /// `GET /v1/settings/application` -> the `application` object.
    pub async fn settings(&self, token: &str) -> Result<Value, CallError> {
        let url = format!("{}/v1/settings/application", self.base_url);
        let (_, v) = self.admin_json("GET /v1/settings/application", token, self.client.get(url)).await?;
        v.pointer("/settings/application").cloned().ok_or_else(|| CallError::Malformed {
            what: "GET /v1/settings/application",
            reason: format!("no settings.application in {v}"),
        })
    }

    /// `PATCH /v1/settings/application` with the fields to change.
    pub async fn patch_settings(&self, token: &str, fields: &Value) -> Result<(), CallError> {
        let url = format!("{}/v1/settings/application", self.base_url);
        self.admin_json("PATCH /v1/settings/application", token, self.client.patch(url).json(fields)).await.map(|_| ())
    }

    /// `POST /v1/certificates/webhooks/ca` (PEM).
    pub async fn upload_webhook_ca(&self, token: &str, pem: &[u8]) -> Result<(), CallError> {
        let url = format!("{}/v1/certificates/webhooks/ca", self.base_url);
        let request = self.client.post(url).header(reqwest::header::CONTENT_TYPE, "text/plain").body(pem.to_vec());
        self.admin_json("POST /v1/certificates/webhooks/ca", token, request).await.map(|_| ())
    }

    /// `POST /v1/settings/backup {"password"}` -> the opaque backup data.
    pub async fn backup(&self, token: &str, password: &str) -> Result<String, CallError> {
        let url = format!("{}/v1/settings/backup", self.base_url);
        let (_, v) = self
            .admin_json("POST /v1/settings/backup", token, self.client.post(url).json(&json!({"password": password})))
            .await?;
        v.pointer("/settings/data").and_then(Value::as_str).map(String::from).ok_or_else(|| CallError::Malformed {
            what: "POST /v1/settings/backup",
            reason: "no settings.data in the answer".into(),
        })
    }

    /// `POST /v1/settings/restore {"password","data"}`.
    pub async fn restore(&self, token: &str, password: &str, data: &str) -> Result<(), CallError> {
        let url = format!("{}/v1/settings/restore", self.base_url);
        let body = json!({"password": password, "data": data});
        self.admin_json("POST /v1/settings/restore", token, self.client.post(url).json(&body)).await.map(|_| ())
    }
}

/// The body of a shard change.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ShardRequest {
    pub cc: String,
    pub phone_number: String,
    pub shards: i32,
    pub cert: String,
    pub pin: Option<String>,
}

/// reqwest's Display hides the cause (refused, TLS, timeout); walk the chain.
fn describe(e: &reqwest::Error) -> String {
    let mut text = if e.is_timeout() { "timed out".to_string() } else { e.to_string() };
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[tokio::test]
    async fn a_name_lookup_that_fails_or_gives_up_says_it_was_a_lookup() {
        use reqwest::dns::Resolve as _;
        let name = |s: &str| s.parse::<reqwest::dns::Name>().expect("a name");
        let host = "acme-webapp.team.svc";
        let never = std::future::pending::<std::io::Result<()>>();
        let gave_up = bounded_lookup(host, Duration::from_millis(10), never).await;
        assert_eq!(gave_up.expect_err("no answer in time").to_string(), "dns lookup of acme-webapp.team.svc timed out");
        let refused = std::future::ready(Err::<(), _>(std::io::Error::other("Name or service not known")));
        let failed = bounded_lookup(host, Duration::from_secs(5), refused).await;
        assert_eq!(
            failed.expect_err("no such name").to_string(),
            "dns lookup of acme-webapp.team.svc failed: Name or service not known"
        );
        let found = BoundedResolver { timeout: Duration::from_secs(5) }.resolve(name("localhost")).await;
        assert!(found.expect("localhost resolves").any(|a| a.ip().is_loopback()));
    }

    /// A CA, and a certificate for `localhost` it issued (DER, and its key).
    fn issued() -> (String, Vec<u8>, Vec<u8>) {
        use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, KeyUsagePurpose};
        let ca_key = KeyPair::generate().expect("a CA key");
        let mut ca = CertificateParams::new(Vec::<String>::new()).expect("CA parameters");
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::DigitalSignature];
        ca.distinguished_name.push(DnType::CommonName, "webapp CA");
        let ca = ca.self_signed(&ca_key).expect("a CA");
        let key = KeyPair::generate().expect("a key");
        let cert = CertificateParams::new(vec!["localhost".to_string()])
            .expect("parameters")
            .signed_by(&key, &ca, &ca_key)
            .expect("a certificate");
        (ca.pem(), cert.der().to_vec(), key.serialize_der())
    }

    /// Serves `200 ok` over TLS with `cert` on a port of loopback, keeping
    /// connections open as a webapp does; counts the connections made.
    async fn serve(cert: Vec<u8>, key: Vec<u8>) -> (u16, Arc<std::sync::atomic::AtomicUsize>) {
        use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let config = rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .expect("protocol versions")
            .with_no_client_auth()
            .with_single_cert(vec![CertificateDer::from(cert)], PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key)))
            .expect("a server configuration");
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("a port");
        let port = listener.local_addr().expect("its address").port();
        let connections = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counted = connections.clone();
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let acceptor = acceptor.clone();
                let counted = counted.clone();
                tokio::spawn(async move {
                    let Ok(mut tls) = acceptor.accept(tcp).await else { return };
                    counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    let mut request = Vec::new();
                    let mut buf = [0u8; 1024];
                    loop {
                        while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                            match tls.read(&mut buf).await {
                                Ok(0) | Err(_) => return,
                                Ok(n) => request.extend_from_slice(&buf[..n]),
                            }
                        }
                        request.clear();
                        if tls.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok").await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        (port, connections)
    }

    #[tokio::test]
    async fn a_client_trusts_what_its_setting_says_and_nothing_else() {
        let (ca, cert, key) = issued();
        let (other_ca, _, _) = issued();
        let (port, _) = serve(cert, key).await;
        let call = |trust: Trust| async move {
            let client = http_client(&trust, None, Duration::from_secs(10)).expect("a client");
            client.get(format!("https://localhost:{port}/")).send().await.map(|r| r.status())
        };
        let ca = ca.into_bytes();
        assert_eq!(call(Trust::Ca(ca.clone())).await.expect("its own CA"), StatusCode::OK);
        assert_eq!(call(Trust::CaAndSystemRoots(ca)).await.expect("its CA among the roots"), StatusCode::OK);
        assert_eq!(call(Trust::InsecureSkipVerify).await.expect("anything goes"), StatusCode::OK);
        call(Trust::Ca(other_ca.into_bytes())).await.expect_err("another CA");
        call(Trust::SystemRoots).await.expect_err("not publicly signed");
        call(Trust::Ca(Vec::new())).await.expect_err("no CA at all");
        let unreadable = "-----BEGIN CERTIFICATE-----\nnot base64!\n-----END CERTIFICATE-----\n";
        assert!(matches!(
            http_client(&Trust::Ca(unreadable.into()), None, Duration::from_secs(1)),
            Err(CallError::Setup(_))
        ));
    }

    #[tokio::test]
    async fn a_certificate_made_for_the_server_name_is_taken_at_another_address() {
        let (ca, cert, key) = issued();
        let (other_ca, _, _) = issued();
        let (port, _) = serve(cert, key).await;
        // Dialed by address, as the operator dials the Service: the
        // certificate is made for `localhost` only.
        let call = |trust: Trust, name: Option<&'static str>| async move {
            let client = http_client(&trust, name, Duration::from_secs(10)).expect("a client");
            client.get(format!("https://127.0.0.1:{port}/")).send().await.map(|r| r.status())
        };
        let ca = ca.into_bytes();
        assert_eq!(call(Trust::Ca(ca.clone()), Some("localhost")).await.expect("made for the name"), StatusCode::OK);
        assert_eq!(call(Trust::CaAndSystemRoots(ca.clone()), Some("localhost")).await.expect("roots"), StatusCode::OK);
        call(Trust::Ca(ca.clone()), None).await.expect_err("not made for the address dialed");
        call(Trust::Ca(ca), Some("wa.example.com")).await.expect_err("not made for another name");
        call(Trust::Ca(other_ca.into_bytes()), Some("localhost")).await.expect_err("another CA");
        assert!(matches!(
            http_client(&Trust::SystemRoots, Some("not a name!"), Duration::from_secs(1)),
            Err(CallError::Setup(_))
        ));
    }

    #[tokio::test]
    async fn a_connection_serves_one_probe_and_is_not_kept_until_the_next() {
        let (ca, cert, key) = issued();
        let (port, connections) = serve(cert, key).await;
        let client = http_client(&Trust::Ca(ca.into_bytes()), None, Duration::from_secs(10)).expect("a client");
        let call = || async {
            let answer = client.get(format!("https://localhost:{port}/")).send().await.expect("an answer");
            answer.bytes().await.expect("a body");
        };
        let made = || connections.load(std::sync::atomic::Ordering::SeqCst);
        call().await;
        call().await;
        assert_eq!(made(), 1, "the calls of one probe share a connection");
        tokio::time::sleep(IDLE_CONNECTION + Duration::from_secs(2)).await;
        call().await;
        assert_eq!(made(), 2, "idle for longer than {IDLE_CONNECTION:?}: closed, a new one made");
    }

    #[test]
    fn a_client_nobody_asks_for_is_dropped() {
        let clients = Clients::default();
        let kept_count = || clients.0.lock().unwrap().clients.len();
        let start = Instant::now();
        let timeout = Duration::from_secs(10);
        let (gone, kept) = (Trust::Ca(b"gone".to_vec()), Trust::Ca(b"kept".to_vec()));
        clients.get_at(&gone, None, timeout, start).expect("a client");
        clients.get_at(&kept, None, timeout, start).expect("a client");
        clients.get_at(&kept, None, Duration::from_secs(20), start).expect("another timeout, another client");
        assert_eq!(kept_count(), 3);
        let hour = Duration::from_secs(3600);
        for hours in 1..=3 {
            clients.get_at(&kept, None, timeout, start + hour * hours).expect("the same client");
        }
        assert_eq!(kept_count(), 1, "unused for three hours: dropped; the one asked for every hour stays");
        let later = start + hour * 3 + Duration::from_secs(60);
        clients.get_at(&gone, None, timeout, later).expect("made again when asked for");
        assert_eq!(kept_count(), 2);
    }

    fn answered(status: u16, code: Option<i64>) -> CallError {
        CallError::Status { what: "set-shards", status, code, details: String::new() }
    }

    #[test]
    fn only_what_the_client_says_to_retry_is_retried() {
        assert!(answered(403, Some(1011)).is_retryable(), "resharding under way: temporarily unavailable");
        assert!(answered(403, None).is_retryable());
        assert!(answered(500, Some(1017)).is_retryable(), "not the primary master (a failover)");
        let refused =
            CallError::Unreachable { url: "https://w".into(), reason: "refused".into(), may_have_arrived: false };
        assert!(refused.is_retryable() && !refused.outcome_unknown());
        let timed_out =
            CallError::Unreachable { url: "https://w".into(), reason: "timed out".into(), may_have_arrived: true };
        assert!(timed_out.outcome_unknown(), "a request that timed out may have been carried out");
        assert!(!answered(403, Some(ACCESS_DENIED)).is_retryable(), "a banned number is not asked again");
        assert!(!answered(400, Some(1009)).is_retryable(), "a wrong certificate is not sent again");
        assert!(!answered(401, None).is_retryable());
    }
}
