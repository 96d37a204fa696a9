//! The controller's one error type, and how each error is retried.
//!
//! A reconcile that fails returns its error to kube's `Controller`, whose `error_policy`
//! asks [`Error::retry`] what kind of failure it was and [`Backoff`] how long to wait:
//! a conflict (this controller raced its own or another writer) is retried at once, a
//! transient failure (API server or podsnapd unreachable, overloaded, timing out) with an
//! exponential backoff per object, and a permanent one (bad input, something missing) only
//! after minutes, in case the world changed meanwhile.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use kube::runtime::controller::Action;

/// Errors of the controller's library; the binary adds context with anyhow.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    /// Bad input in an object (a policy, a storage config, an annotation).
    #[error("{0}")]
    Invalid(String),
    /// Something the request names does not exist.
    #[error("{0}")]
    NotFound(String),
    /// The node's podsnapd could not be reached or refused; `code` is its gRPC status
    /// (`Unavailable` when it could not be reached).
    #[error("podsnapd on node {node} ({endpoint}): {message}")]
    Podsnapd {
        node: String,
        endpoint: String,
        message: String,
        code: tonic::Code,
    },
}

/// What kind of failure an error is, for its retry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Retry {
    /// A write raced another one (HTTP 409): retry at once with the object as it is now.
    Conflict,
    /// Worth retrying soon: nothing is wrong with the request.
    Transient,
    /// Retrying the same request gives the same answer.
    Permanent,
}

impl Error {
    pub fn retry(&self) -> Retry {
        match self {
            Error::Kube(kube::Error::Api(s)) => match s.code {
                409 => Retry::Conflict,
                429 | 500..=599 => Retry::Transient,
                _ => Retry::Permanent,
            },
            // Connection, TLS, timeouts, decoding of a half-written answer.
            Error::Kube(_) => Retry::Transient,
            Error::Invalid(_) | Error::NotFound(_) => Retry::Permanent,
            Error::Podsnapd { code, .. } => match code {
                tonic::Code::Unavailable
                | tonic::Code::DeadlineExceeded
                | tonic::Code::Aborted
                | tonic::Code::ResourceExhausted
                | tonic::Code::Unknown
                | tonic::Code::Cancelled => Retry::Transient,
                _ => Retry::Permanent,
            },
        }
    }

    /// Whether the request itself is at fault (the SDK's `Failed`), as opposed to something
    /// in the way of it (`Error`: a node, the store, the API).
    pub fn is_request_fault(&self) -> bool {
        matches!(self, Error::Invalid(_) | Error::NotFound(_))
    }
}

/// The first wait after a transient failure; each further failure doubles it.
pub const BACKOFF_BASE: Duration = Duration::from_secs(1);
/// The longest wait after transient failures.
pub const BACKOFF_MAX: Duration = Duration::from_secs(300);
/// The wait after a conflict.
pub const CONFLICT_RETRY: Duration = Duration::from_millis(200);
/// The wait after a permanent failure.
pub const PERMANENT_RETRY: Duration = Duration::from_secs(600);

/// Consecutive transient failures per object (by uid), reset by a successful reconcile.
#[derive(Debug, Default)]
pub struct Backoff {
    failures: Mutex<HashMap<String, u32>>,
}

impl Backoff {
    /// The requeue after `err` for the object `key`.
    pub fn after(&self, key: &str, err: &Error) -> Action {
        Action::requeue(self.delay(key, err))
    }

    /// The delay after `err` for the object `key` (counts a transient failure).
    pub fn delay(&self, key: &str, err: &Error) -> Duration {
        match err.retry() {
            Retry::Conflict => CONFLICT_RETRY,
            Retry::Permanent => PERMANENT_RETRY,
            Retry::Transient => {
                let mut m = self.failures.lock().expect("backoff lock");
                let n = m.entry(key.to_string()).or_insert(0);
                let d = BACKOFF_BASE.saturating_mul(1u32 << (*n).min(16));
                *n = n.saturating_add(1);
                d.min(BACKOFF_MAX)
            }
        }
    }

    /// A reconcile of `key` succeeded: its next failure starts from the base again.
    pub fn reset(&self, key: &str) {
        self.failures.lock().expect("backoff lock").remove(key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn api(code: u16) -> Error {
        Error::Kube(kube::Error::Api(
            kube::core::Status::failure("x", "X")
                .with_code(code)
                .boxed(),
        ))
    }

    fn node(code: tonic::Code) -> Error {
        Error::Podsnapd {
            node: "n".into(),
            endpoint: "e".into(),
            message: "m".into(),
            code,
        }
    }

    #[test]
    fn errors_are_classified_by_what_a_retry_could_change() {
        assert_eq!(api(409).retry(), Retry::Conflict);
        assert_eq!(api(503).retry(), Retry::Transient);
        assert_eq!(api(429).retry(), Retry::Transient);
        assert_eq!(api(403).retry(), Retry::Permanent);
        assert_eq!(node(tonic::Code::Unavailable).retry(), Retry::Transient);
        assert_eq!(
            node(tonic::Code::FailedPrecondition).retry(),
            Retry::Permanent
        );
        assert_eq!(node(tonic::Code::NotFound).retry(), Retry::Permanent);
        assert_eq!(Error::Invalid("x".into()).retry(), Retry::Permanent);
        assert!(Error::NotFound("x".into()).is_request_fault());
        assert!(!node(tonic::Code::Unavailable).is_request_fault());
    }

    #[test]
    fn transient_failures_back_off_exponentially_per_object_until_a_success() {
        let b = Backoff::default();
        let e = node(tonic::Code::Unavailable);
        assert_eq!(b.delay("a", &e), Duration::from_secs(1));
        assert_eq!(b.delay("a", &e), Duration::from_secs(2));
        assert_eq!(b.delay("a", &e), Duration::from_secs(4));
        assert_eq!(b.delay("b", &e), Duration::from_secs(1), "per object");
        for _ in 0..20 {
            b.delay("a", &e);
        }
        assert_eq!(b.delay("a", &e), BACKOFF_MAX);
        b.reset("a");
        assert_eq!(b.delay("a", &e), Duration::from_secs(1));
        assert_eq!(b.delay("a", &api(409)), CONFLICT_RETRY);
        assert_eq!(b.delay("a", &Error::Invalid("x".into())), PERMANENT_RETRY);
    }
}
