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

    #[error("claiming the number: {0}")]
    Claim(#[from] super::claim::ClaimError),

    #[error("the WhatsAppNumber changed since it was read; its status was not written")]
    StaleObject,

    #[error(transparent)]
    CacheNotReady(#[from] super::cache::NotReady),

    #[error("{0}")]
    Finalizer(#[source] Box<kube::runtime::finalizer::Error<Error>>),
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
            Error::Claim(e) => e.reason(),
            Error::CacheNotReady(_) => "CacheNotReady",
            Error::StaleObject => "StaleObject",
            Error::Finalizer(e) => match e.as_ref() {
                kube::runtime::finalizer::Error::ApplyFailed(inner)
                | kube::runtime::finalizer::Error::CleanupFailed(inner) => inner.reason(),
                _ => "FinalizerUpdate",
            },
        }
    }
}

impl Error {
    /// A write refused because the object changed since it was read.
    pub fn is_stale(&self) -> bool {
        match self {
            Error::StaleObject => true,
            Error::Finalizer(e) => match e.as_ref() {
                kube::runtime::finalizer::Error::ApplyFailed(inner)
                | kube::runtime::finalizer::Error::CleanupFailed(inner) => inner.is_stale(),
                _ => false,
            },
            _ => false,
        }
    }

    /// Errors that need no retry: the object is gone, or its namespace is being
    /// deleted (everything in it goes, so re-creating children is pointless).
    pub fn is_moot(&self) -> bool {
        match self {
            Error::Kube(kube::Error::Api(s)) => {
                s.code == 403
                    && s.details.as_ref().is_some_and(|d| d.causes.iter().any(|c| c.reason == "NamespaceTerminating"))
            }
            Error::Finalizer(e) => match e.as_ref() {
                kube::runtime::finalizer::Error::RemoveFinalizer(kube::Error::Api(s)) => s.code == 404,
                kube::runtime::finalizer::Error::ApplyFailed(inner)
                | kube::runtime::finalizer::Error::CleanupFailed(inner) => inner.is_moot(),
                _ => false,
            },
            _ => false,
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stale_write_is_known_through_the_finalizer() {
        assert!(Error::StaleObject.is_stale());
        let wrapped = Error::Finalizer(Box::new(kube::runtime::finalizer::Error::ApplyFailed(Error::StaleObject)));
        assert!(wrapped.is_stale());
        assert_eq!(wrapped.reason(), "StaleObject");
        assert!(!Error::MissingMetadata("uid").is_stale());
    }
}
