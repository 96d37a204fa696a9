//! The daemon's error type and its one mapping to gRPC status codes.

use podsnap_runtime::RuntimeError;
use podsnap_store::StoreError;

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error("{0}")]
    InvalidArgument(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    AlreadyExists(String),
    /// The snapshot cannot run on this node; the message lists every reason.
    #[error("{0}")]
    Incompatible(String),
    /// The installed runsc (or this configuration) cannot do what was asked.
    #[error("{0}")]
    Unsupported(String),
    #[error("{0}")]
    Unavailable(String),
    #[error("{}", chain(.0))]
    Store(#[from] StoreError),
    #[error("{}", chain(.0))]
    Runtime(#[from] RuntimeError),
    /// A file operation of the daemon's own (job records, work dirs) failed; the message is
    /// what was being done, the source says why.
    #[error("{context}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    Internal(String),
}

/// One line: the error and its sources, `: `-separated (sources are not repeated in messages).
pub use podsnap_proto::client::error_chain as chain;

impl DaemonError {
    /// An [`DaemonError::Io`]: `context` says what was being done (`writing the job record`).
    pub fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        DaemonError::Io {
            context: context.into(),
            source,
        }
    }

    /// The one-line message callers see: the error and its causes ([`chain`]).
    pub fn message(&self) -> String {
        chain(self)
    }

    /// A short, stable label for metrics (`error_kind`).
    pub fn kind(&self) -> &'static str {
        match self {
            DaemonError::InvalidArgument(_) => "invalid_argument",
            DaemonError::NotFound(_) => "not_found",
            DaemonError::AlreadyExists(_) => "already_exists",
            DaemonError::Incompatible(_) => "incompatible",
            DaemonError::Unsupported(_) => "unsupported",
            DaemonError::Unavailable(_) => "unavailable",
            DaemonError::Store(_) => "store",
            DaemonError::Runtime(_) => "runtime",
            DaemonError::Io { .. } | DaemonError::Internal(_) => "internal",
        }
    }

    pub fn code(&self) -> tonic::Code {
        use tonic::Code;
        match self {
            DaemonError::InvalidArgument(_) => Code::InvalidArgument,
            DaemonError::NotFound(_) => Code::NotFound,
            DaemonError::AlreadyExists(_) => Code::AlreadyExists,
            DaemonError::Incompatible(_) | DaemonError::Unsupported(_) => Code::FailedPrecondition,
            DaemonError::Unavailable(_) => Code::Unavailable,
            DaemonError::Store(e) => store_code(e),
            DaemonError::Runtime(e) => runtime_code(e),
            DaemonError::Io { source, .. } if is_disk_full(source) => Code::ResourceExhausted,
            DaemonError::Io { .. } | DaemonError::Internal(_) => Code::Internal,
        }
    }
}

fn store_code(e: &StoreError) -> tonic::Code {
    use tonic::Code;
    match e {
        StoreError::SnapshotNotFound(_) => Code::NotFound,
        StoreError::SnapshotExists(_) | StoreError::DestinationNotEmpty(_) => Code::AlreadyExists,
        StoreError::InvalidUrl { .. } | StoreError::InvalidSnapshotId { .. } => {
            Code::InvalidArgument
        }
        StoreError::InvalidManifest { .. }
        | StoreError::InvalidIndex { .. }
        | StoreError::Corrupt { .. }
        | StoreError::MissingObject { .. } => Code::DataLoss,
        StoreError::UnsupportedFormat { .. }
        | StoreError::Encryption { .. }
        | StoreError::Cache(_) => Code::FailedPrecondition,
        StoreError::Backend { source, .. } => match &**source {
            object_store::Error::NotFound { .. } => Code::NotFound,
            _ => Code::Unavailable,
        },
        StoreError::Io { source, .. } if is_disk_full(source) => Code::ResourceExhausted,
        StoreError::Limit(_) => Code::InvalidArgument,
        StoreError::WriterFailed(_) => Code::Aborted,
        _ => Code::Internal,
    }
}

fn is_disk_full(e: &std::io::Error) -> bool {
    e.raw_os_error() == Some(libc::ENOSPC) || e.raw_os_error() == Some(libc::EDQUOT)
}

fn runtime_code(e: &RuntimeError) -> tonic::Code {
    use podsnap_runtime::runsc::Error as R;
    use podsnap_runtime::ContainerdError as C;
    use tonic::Code;
    match e {
        RuntimeError::NotFound { .. } => Code::NotFound,
        RuntimeError::NotRunsc { .. }
        | RuntimeError::Unsupported { .. }
        | RuntimeError::NoContainerd { .. }
        | RuntimeError::InvalidState { .. } => Code::FailedPrecondition,
        RuntimeError::InvalidRequest(_) => Code::InvalidArgument,
        RuntimeError::Runsc(R::CommandTimeout { .. }) => Code::DeadlineExceeded,
        RuntimeError::Runsc(r) if r.is_not_found() => Code::NotFound,
        RuntimeError::Containerd(C::NotFound { .. }) => Code::NotFound,
        RuntimeError::Containerd(C::Unavailable { .. }) => Code::Unavailable,
        RuntimeError::Containerd(C::Unsupported { .. }) => Code::Unimplemented,
        RuntimeError::Io { source, .. } if is_disk_full(source) => Code::ResourceExhausted,
        RuntimeError::Volumes {
            source:
                podsnap_volumes::PackError::TooLarge { .. }
                | podsnap_volumes::PackError::TooManyEntries { .. }
                | podsnap_volumes::PackError::PathTooLong { .. },
            ..
        } => Code::FailedPrecondition,
        _ => Code::Internal,
    }
}

/// The one place where domain errors become gRPC statuses. The call's span, when this runs
/// inside one (the server gives each call a span with these fields), records the failure, so
/// an exported span of a failed call has an error status with the message.
impl From<DaemonError> for tonic::Status {
    fn from(e: DaemonError) -> Self {
        let status = tonic::Status::new(e.code(), e.message());
        let span = tracing::Span::current();
        span.record("otel.status_code", "ERROR");
        span.record(
            "otel.status_description",
            format!("{:?}: {}", status.code(), status.message()),
        );
        status
    }
}

pub type Result<T, E = DaemonError> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_disk_is_resource_exhausted_and_the_message_keeps_its_cause() {
        for errno in [libc::ENOSPC, libc::EDQUOT] {
            let e = DaemonError::io(
                "writing the job record",
                std::io::Error::from_raw_os_error(errno),
            );
            assert_eq!(e.code(), tonic::Code::ResourceExhausted);
            let status = tonic::Status::from(e);
            assert!(
                status.message().starts_with("writing the job record: "),
                "{}",
                status.message()
            );
            assert!(
                status
                    .message()
                    .contains(&std::io::Error::from_raw_os_error(errno).to_string()),
                "{}",
                status.message()
            );
        }
        let other = DaemonError::io(
            "creating /w",
            std::io::Error::from_raw_os_error(libc::EACCES),
        );
        assert_eq!(other.code(), tonic::Code::Internal);
        assert_eq!(other.kind(), "internal");
    }

    #[test]
    fn pod_volumes_too_large_for_a_snapshot_are_a_failed_precondition() {
        let e = DaemonError::from(RuntimeError::Volumes {
            target: "containerd container k8s.io/sb".into(),
            source: podsnap_volumes::PackError::TooLarge {
                volume: podsnap_volumes::VolumeKey::empty_dir("disk").unwrap(),
                limit: 1 << 30,
            },
        });
        assert_eq!(e.code(), tonic::Code::FailedPrecondition);
        assert_eq!(
            e.message(),
            "cannot carry the volumes of containerd container k8s.io/sb in its snapshot: the \
             pod's volumes hold more than 1073741824 bytes of files (reached in emptyDir \
             \"disk\"): too large to carry in a snapshot; keep large data on a persistent volume"
        );
    }

    #[test]
    fn messages_do_not_repeat_their_sources() {
        let e = DaemonError::from(StoreError::SnapshotNotFound("s1".into()));
        assert_eq!(e.message(), e.to_string());
    }
}
