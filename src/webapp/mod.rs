//! The operator's client of the webapp's REST API: health and shards.
//!
//! It authenticates with the API key the operator generated
//! (`Authorization: Apikey <key>`), speaks HTTPS only, trusts the CA it is
//! given (or skips verification when the spec says so), and bounds every call.

pub mod phone;

use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::health::report::{self, Health};

/// How the webapp's certificate is checked.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Trust {
    /// PEM CA certificates (one or more) that signed the webapp's certificate.
    Ca(Vec<u8>),
    /// The platform's roots (a certificate from a public CA).
    SystemRoots,
    /// No verification at all: only when the spec asks for it.
    InsecureSkipVerify,
}

#[derive(Debug, thiserror::Error)]
pub enum CallError {
    /// No answer: connection refused, TLS failure, timeout, DNS.
    #[error("the webapp at {url} cannot be reached: {reason}")]
    Unreachable { url: String, reason: String },
    /// The webapp answered with an error status.
    #[error("the webapp answered {status} to {what}: {details}")]
    Status { what: &'static str, status: u16, code: Option<i64>, details: String },
    #[error("the webapp's answer to {what} cannot be read: {reason}")]
    Malformed { what: &'static str, reason: String },
    #[error("the webapp client cannot be built: {0}")]
    Setup(String),
}

impl CallError {
    /// Failures the client itself says to retry: 403 "temporarily unavailable",
    /// 1011 "Service not ready", 1017 "Not Primary Master", 1018 "Not Primary Coreapp".
    pub fn is_retryable(&self) -> bool {
        match self {
            CallError::Status { status, code, .. } => {
                *status == 403 || matches!(code, Some(1011) | Some(1017) | Some(1018))
            }
            CallError::Unreachable { .. } => true,
            _ => false,
        }
    }
}

/// Builds a client for one trust setting; cheap enough to keep one per number.
pub fn http_client(trust: &Trust, timeout: Duration) -> Result<reqwest::Client, CallError> {
    let mut builder = reqwest::Client::builder()
        .use_rustls_tls()
        .timeout(timeout)
        .connect_timeout(timeout)
        .https_only(true)
        .user_agent(concat!("whatsapp-operator/", env!("CARGO_PKG_VERSION")));
    match trust {
        Trust::Ca(pem) => {
            let certs = reqwest::Certificate::from_pem_bundle(pem).map_err(|e| CallError::Setup(e.to_string()))?;
            builder = builder.tls_built_in_root_certs(false);
            for cert in certs {
                builder = builder.add_root_certificate(cert);
            }
        }
        Trust::SystemRoots => {}
        Trust::InsecureSkipVerify => builder = builder.danger_accept_invalid_certs(true),
    }
    builder.build().map_err(|e| CallError::Setup(e.to_string()))
}

/// One webapp endpoint with its credentials.
pub struct Webapp<'a> {
    pub client: &'a reqwest::Client,
    /// `https://host:port`, no trailing slash.
    pub base_url: &'a str,
    pub api_key: &'a str,
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
        request: reqwest::RequestBuilder,
    ) -> Result<(StatusCode, Vec<u8>), CallError> {
        let response = request
            .header(reqwest::header::AUTHORIZATION, format!("Apikey {}", self.api_key))
            .send()
            .await
            .map_err(|e| CallError::Unreachable { url: self.base_url.to_string(), reason: describe(&e) })?;
        let status = response.status();
        let body = response
            .bytes()
            .await
            .map_err(|e| CallError::Unreachable { url: self.base_url.to_string(), reason: describe(&e) })?
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
        let (_, body) = self.call("GET /v1/health", self.client.get(format!("{}/v1/health", self.base_url))).await?;
        let health =
            report::parse(&body).map_err(|e| CallError::Malformed { what: "GET /v1/health", reason: e.to_string() })?;
        Ok((health, started.elapsed()))
    }

    /// `GET /v1/account/shards` -> `{"account":{"shards":N}}`.
    pub async fn shards(&self) -> Result<i32, CallError> {
        let (_, body) = self
            .call("GET /v1/account/shards", self.client.get(format!("{}/v1/account/shards", self.base_url)))
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

    /// `POST /v1/account/shards`; 201 means done.
    pub async fn set_shards(&self, request: &ShardRequest) -> Result<(), CallError> {
        let mut body = json!({"cc": request.cc, "phone_number": request.phone_number, "shards": request.shards, "cert": request.cert});
        if let Some(pin) = &request.pin {
            body["pin"] = json!(pin);
        }
        self.call(
            "POST /v1/account/shards",
            self.client.post(format!("{}/v1/account/shards", self.base_url)).json(&body),
        )
        .await
        .map(|_| ())
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
