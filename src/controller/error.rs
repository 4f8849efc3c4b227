//! Reconcile errors, each with a stable reason for metrics, events and logs.

use thiserror::Error;

#[derive(Debug, Error)]
pub enum Error {
    #[error("Kubernetes API request failed: {0}")]
    Kube(#[from] kube::Error),

    #[error("could not encode an object: {0}")]
    Encode(#[from] serde_json::Error),

    #[error("the WhatsAppNumber has no {0}")]
    MissingMetadata(&'static str),
}

impl Error {
    /// A short label for metrics and events; it groups errors by cause, never by object.
    pub fn reason(&self) -> &'static str {
        match self {
            Error::Kube(kube::Error::Api(status)) if status.code == 409 => "Conflict",
            Error::Kube(kube::Error::Api(status)) if status.code == 403 => "Forbidden",
            Error::Kube(kube::Error::Api(status)) if status.code == 422 => "Invalid",
            Error::Kube(kube::Error::Api(_)) => "ApiError",
            Error::Kube(_) => "ApiUnreachable",
            Error::Encode(_) => "EncodeFailed",
            Error::MissingMetadata(_) => "MissingMetadata",
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
