//! Why the wrapper refused a call. Each error names what failed; its cause is its `source`,
//! never repeated in its own message: [`crate::run`] renders the chain as one line
//! (`what: why: ...`) on stderr and in runsc's log.

use std::path::PathBuf;

use crate::config::ConfigError;
use crate::daemon::PrepareError;
use crate::pod::PodRestoreError;
use crate::spec::SpecError;

/// Why [`crate::plan`] gave no plan.
#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("runsc {name:?} not found on PATH; set runsc in the config file or PODSNAP_RUNSC")]
    RunscNotFound { name: PathBuf },
    #[error(
        "configured runsc {} is podsnap-runsc itself; point runsc (config file or PODSNAP_RUNSC) \
         at the real runsc",
        .path.display()
    )]
    RunscIsWrapper { path: PathBuf },
    /// A bundle whose restore annotation is there but names nothing.
    #[error(transparent)]
    Spec(#[from] SpecError),
    #[error("cannot record the network of host-network pod sandbox")]
    RecordNetwork(#[source] std::io::Error),
    #[error("cannot read restore marker {}", .path.display())]
    ReadMarker {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot restore container {id} from snapshot {snapshot}")]
    Restore {
        id: String,
        snapshot: String,
        #[source]
        source: Box<RestoreError>,
    },
}

/// Why an annotated container cannot be restored (the cause of [`PlanError::Restore`]).
#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    /// podsnapd refused, or could not be reached.
    #[error(transparent)]
    Prepare(#[from] PrepareError),
    /// The pod's or container's refusal (namespace, container order, sandbox marker).
    #[error(transparent)]
    Pod(#[from] PodRestoreError),
    #[error(
        "it is not a snapshot of a Kubernetes pod (its manifest records no pod); a pod is \
         restored only from a pod snapshot (podsnapctl checkpoint --pod)"
    )]
    NotAPodSnapshot,
    #[error("podsnapd's image dir {} is not a directory on this host", .0.display())]
    ImageDirMissing(PathBuf),
    /// The pod's emptyDirs or `/dev/shm` could not be given the snapshot's contents.
    #[error(transparent)]
    Volumes(#[from] crate::volumes::VolumeError),
    #[error("cannot write restore marker {}", .path.display())]
    WriteMarker {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// The error and its causes as one line: `what: why: ...` (a cause already quoted by the
/// message before it is not repeated).
pub fn one_line(e: &(dyn std::error::Error + 'static)) -> String {
    crate::daemon::one_line(&podsnap_proto::client::error_chain(e))
}

/// Why the wrapper's own part of an app container's `create`, `start`, `kill` or `delete`
/// failed (see [`crate::pod`]); runsc's own failures are its exit code.
#[derive(Debug, thiserror::Error)]
pub enum ContainerError {
    #[error("cannot run {}", .runsc.display())]
    RunRunsc {
        runsc: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot create waiter record {}", .record.display())]
    CreateRecord {
        record: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot find this binary")]
    CurrentExe(#[source] std::io::Error),
    #[error("cannot start the container's waiter")]
    StartWaiter(#[source] std::io::Error),
    #[error("cannot write waiter record {}", .record.display())]
    WriteRecord {
        record: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot write pid file {}", .path.display())]
    WritePidFile {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "the container's waiter (record {}) is gone; delete and create the container again",
        .record.display()
    )]
    WaiterGone { record: PathBuf },
    #[error("cannot open the container's stdio (waiter fd {fd})")]
    OpenStdio {
        fd: u32,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot signal the waiter ({})", .record.display())]
    SignalWaiter {
        record: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("runsc {subcommand} failed ({status}); its reason is in runsc's log")]
    RunscFailed {
        subcommand: String,
        status: std::process::ExitStatus,
    },
}
