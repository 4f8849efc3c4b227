//! Reconcile errors, each with a stable reason for metrics, events and logs.

use thiserror::Error;

#[derive(Debug, Error)]
pub enum Error {
    #[error("Kubernetes API request failed: {0}")]
    Kube(#[from] kube::Error),

    /// A request that failed, named with the object it was about.
    #[error("{action}: {source}")]
    Request {
        action: String,
        #[source]
        source: kube::Error,
    },

    #[error("could not encode an object: {0}")]
    Encode(#[from] serde_json::Error),

    #[error("the WhatsAppNumber has no {0}")]
    MissingMetadata(&'static str),

    #[error("claiming the number: {0}")]
    Claim(#[from] super::claim::ClaimError),

    #[error("the WhatsAppNumber changed since it was read; its status was not written")]
    StaleObject,

    /// The claim cache showed the number held, the API server no longer does.
    /// Not a stale object: the claim watch wakes the number once its cache
    /// catches up, and until then the error backoff spaces the reads (a
    /// stalled watch would otherwise have them made twice a second).
    #[error("the number's claim changed since the cache showed it; no node was started")]
    ClaimChanged,

    #[error(transparent)]
    CacheNotReady(#[from] super::cache::NotReady),

    #[error("{0}")]
    Finalizer(#[source] Box<kube::runtime::finalizer::Error<Error>>),
}

impl Error {
    /// Names the request that failed: `.map_err(Error::request("deleting StatefulSet team/acme-master"))`.
    pub fn request(action: impl std::fmt::Display) -> impl FnOnce(kube::Error) -> Error {
        move |source| Error::Request { action: action.to_string(), source }
    }

    /// A short label for metrics and events; it groups errors by cause, never by object.
    pub fn reason(&self) -> &'static str {
        match self {
            Error::Kube(e) | Error::Request { source: e, .. } => api_reason(e),
            Error::Encode(_) => "EncodeFailed",
            Error::MissingMetadata(_) => "MissingMetadata",
            Error::Claim(e) => e.reason(),
            Error::CacheNotReady(_) => "CacheNotReady",
            Error::StaleObject => "StaleObject",
            Error::ClaimChanged => "ClaimChanged",
            Error::Finalizer(e) => match e.as_ref() {
                kube::runtime::finalizer::Error::ApplyFailed(inner)
                | kube::runtime::finalizer::Error::CleanupFailed(inner) => inner.reason(),
                _ => "FinalizerUpdate",
            },
        }
    }
}

impl Error {
    /// A write refused because the object (or its claim) changed since it
    /// was read: the newer state is on its way through a watch.
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
            Error::Kube(kube::Error::Api(s)) | Error::Request { source: kube::Error::Api(s), .. } => {
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

/// The metrics category of a failed API request.
pub(super) fn api_reason(error: &kube::Error) -> &'static str {
    match error {
        kube::Error::Api(status) if status.code == 409 => "Conflict",
        kube::Error::Api(status) if status.code == 403 => "Forbidden",
        kube::Error::Api(status) if status.code == 422 => "Invalid",
        kube::Error::Api(_) => "ApiError",
        _ => "ApiUnreachable",
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    fn api(code: u16, reason: &str) -> kube::Error {
        kube::Error::Api(Box::new(kube::core::Status::failure("refused", reason).with_code(code)))
    }

    #[test]
    fn a_failed_request_names_its_object_and_keeps_its_category() {
        let e = Error::request("applying StatefulSet team/acme-master")(api(422, "Invalid"));
        assert!(e.to_string().starts_with("applying StatefulSet team/acme-master: "), "{e}");
        assert_eq!(e.reason(), "Invalid");
        assert_eq!(Error::request("x")(api(403, "Forbidden")).reason(), "Forbidden");
        assert_eq!(Error::request("x")(api(409, "Conflict")).reason(), "Conflict");
        assert_eq!(Error::request("x")(api(500, "InternalError")).reason(), "ApiError");
        assert_eq!(Error::from(api(409, "Conflict")).reason(), "Conflict", "unnamed ones too");
    }

    #[test]
    fn a_terminating_namespace_makes_a_named_request_moot() {
        let status: kube::core::Status = serde_json::from_value(serde_json::json!({
            "status": "Failure", "code": 403, "reason": "Forbidden",
            "message": "namespace team is being terminated",
            "details": {"causes": [{"reason": "NamespaceTerminating", "message": "namespace team is being terminated"}]}
        }))
        .expect("a Status");
        let e = Error::request("applying Service team/acme-webapp")(kube::Error::Api(Box::new(status)));
        assert!(e.is_moot());
        assert!(!Error::request("x")(api(403, "Forbidden")).is_moot());
    }

    #[test]
    fn a_stale_write_is_known_through_the_finalizer() {
        assert!(Error::StaleObject.is_stale());
        let wrapped = Error::Finalizer(Box::new(kube::runtime::finalizer::Error::ApplyFailed(Error::StaleObject)));
        assert!(wrapped.is_stale());
        assert_eq!(wrapped.reason(), "StaleObject");
        assert!(!Error::MissingMetadata("uid").is_stale());
    }
}
