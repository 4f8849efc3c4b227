//! The client's JSON conventions: `meta` on every response and errors in the
//! `{"errors":[{"code","title","details"}]}` envelope.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ErrorItem {
    pub code: i64,
    pub title: String,
    #[serde(default)]
    pub details: String,
}

impl ErrorItem {
    pub fn new(code: i64, title: &str, details: impl Into<String>) -> ErrorItem {
        ErrorItem { code, title: title.to_string(), details: details.into() }
    }
}

// Error codes of the client API.
pub const ACCESS_DENIED: i64 = 1005;
pub const NOT_FOUND: i64 = 1006;
pub const MISSING_PARAMETER: i64 = 1008;
pub const INVALID_PARAMETER: i64 = 1009;
pub const SERVICE_NOT_READY: i64 = 1011;
pub const INTERNAL_ERROR: i64 = 1014;
pub const TOO_MANY_REQUESTS: i64 = 1015;
pub const NOT_PRIMARY_MASTER: i64 = 1017;
pub const NOT_PRIMARY_COREAPP: i64 = 1018;
pub const PASSWORD_CHANGE_REQUIRED: i64 = 1024;
pub const GENERIC_ERROR: i64 = 1000;

pub fn title_of(code: i64) -> &'static str {
    match code {
        ACCESS_DENIED => "Access denied",
        NOT_FOUND => "Resource not found",
        MISSING_PARAMETER => "Required parameter is missing",
        INVALID_PARAMETER => "Parameter value is not valid",
        SERVICE_NOT_READY => "Service not ready",
        INTERNAL_ERROR => "Internal error",
        TOO_MANY_REQUESTS => "Too many requests",
        NOT_PRIMARY_MASTER => "Not Primary Master",
        NOT_PRIMARY_COREAPP => "Not Primary Coreapp",
        PASSWORD_CHANGE_REQUIRED => "Password change required",
        _ => "Generic error",
    }
}

/// An API error: HTTP status plus one error item.
#[derive(Debug, Clone)]
pub struct ApiError {
    pub status: StatusCode,
    pub item: ErrorItem,
}

impl ApiError {
    pub fn new(status: StatusCode, code: i64, details: impl Into<String>) -> ApiError {
        ApiError { status, item: ErrorItem::new(code, title_of(code), details) }
    }
    pub fn unauthorized(details: &str) -> ApiError {
        ApiError::new(StatusCode::UNAUTHORIZED, ACCESS_DENIED, details)
    }
    pub fn not_ready(details: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::SERVICE_UNAVAILABLE, SERVICE_NOT_READY, details)
    }
    pub fn not_primary_master(details: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::SERVICE_UNAVAILABLE, NOT_PRIMARY_MASTER, details)
    }
    pub fn bad(code: i64, details: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, code, details)
    }
    pub fn internal(details: impl std::fmt::Display) -> ApiError {
        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, INTERNAL_ERROR, details.to_string())
    }
}

impl From<crate::Error> for ApiError {
    fn from(e: crate::Error) -> ApiError {
        ApiError::internal(e)
    }
}

/// `meta` as the client's API puts it on every response. Stored in a
/// process-wide cell because every response needs the version.
static VERSION: std::sync::OnceLock<String> = std::sync::OnceLock::new();

pub fn set_version(v: &str) {
    let _ = VERSION.set(v.to_string());
}

pub fn meta() -> Value {
    json!({"api_status": "stable", "version": VERSION.get().map(String::as_str).unwrap_or("")})
}

/// Adds `meta` to an object body.
pub fn with_meta(mut body: Value) -> Value {
    if let Value::Object(m) = &mut body {
        m.insert("meta".into(), meta());
    }
    body
}

pub fn ok(status: StatusCode, body: Value) -> Response {
    (status, Json(with_meta(body))).into_response()
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        ok(self.status, json!({"errors": [self.item]}))
    }
}

pub type ApiResult = Result<Response, ApiError>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_envelope_shape() {
        let e = ApiError::not_primary_master("retry");
        let body = json!({"errors": [e.item]});
        assert_eq!(body, json!({"errors":[{"code":1017,"title":"Not Primary Master","details":"retry"}]}));
    }
}
