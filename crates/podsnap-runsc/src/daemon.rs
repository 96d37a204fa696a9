//! The one call the wrapper makes to podsnapd: `PrepareRestore`, over its Unix socket.

use std::path::{Path, PathBuf};
use std::time::Duration;

use podsnap_proto::client::{connect_unix_with, error_chain, unix_endpoint};
use podsnap_proto::v1::podsnap_client::PodsnapClient;
use podsnap_proto::v1::PrepareRestoreRequest;

/// How long connecting to the socket may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Why PrepareRestore gave no image (each renders as one line).
#[derive(Debug, thiserror::Error)]
pub enum PrepareError {
    #[error("cannot reach podsnapd at {socket}: {reason}")]
    Unreachable { socket: PathBuf, reason: String },
    #[error("podsnapd did not prepare snapshot {snapshot} within {}", humantime::format_duration(*timeout))]
    Timeout { snapshot: String, timeout: Duration },
    #[error("{message} ({code})")]
    Refused { code: &'static str, message: String },
    #[error("podsnapd returned no image dir for snapshot {snapshot}")]
    NoImageDir { snapshot: String },
    #[error("cannot start the gRPC client: {0}")]
    Runtime(std::io::Error),
}

/// The proto's spelling of a gRPC code (what the daemon's API documents).
fn code_name(code: tonic::Code) -> &'static str {
    use tonic::Code::*;
    match code {
        Ok => "OK",
        Cancelled => "CANCELLED",
        Unknown => "UNKNOWN",
        InvalidArgument => "INVALID_ARGUMENT",
        DeadlineExceeded => "DEADLINE_EXCEEDED",
        NotFound => "NOT_FOUND",
        AlreadyExists => "ALREADY_EXISTS",
        PermissionDenied => "PERMISSION_DENIED",
        ResourceExhausted => "RESOURCE_EXHAUSTED",
        FailedPrecondition => "FAILED_PRECONDITION",
        Aborted => "ABORTED",
        OutOfRange => "OUT_OF_RANGE",
        Unimplemented => "UNIMPLEMENTED",
        Internal => "INTERNAL",
        Unavailable => "UNAVAILABLE",
        DataLoss => "DATA_LOSS",
        Unauthenticated => "UNAUTHENTICATED",
    }
}

/// What the wrapper asks PrepareRestore for.
#[derive(Clone, Copy, Debug)]
pub struct Want<'a> {
    pub snapshot: &'a str,
    /// The container whose restore reads the image.
    pub container_id: &'a str,
    /// The runsc root that container runs under (lets podsnapd follow it: a lazily served
    /// image lives while the container does).
    pub runsc_root: Option<&'a Path>,
    /// The restore runs with `--background`, so the image may be served lazily.
    pub background: bool,
}

impl<'a> Want<'a> {
    /// A whole local image, for a restore without `--background`.
    pub fn pulled(snapshot: &'a str, container_id: &'a str) -> Want<'a> {
        Want {
            snapshot,
            container_id,
            runsc_root: None,
            background: false,
        }
    }
}

/// What PrepareRestore gave: the image and what the manifest says of the pod.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Prepared {
    /// Local directory holding the verified image (a mount podsnapd serves when `lazy`).
    pub image_dir: PathBuf,
    /// podsnapd serves the image lazily: every read verified, pages fetched on demand.
    pub lazy: bool,
    /// The pod the snapshot was taken of, if it was of a Kubernetes pod.
    pub pod: Option<crate::pod::PodSnapshot>,
    /// How many containers the snapshot's sandbox had (0: not recorded).
    pub containers: usize,
}

/// Asks podsnapd at `socket` to fetch and verify a snapshot for a container; returns the
/// local image directory and the snapshot's pod.
pub fn prepare_restore(
    socket: &Path,
    want: &Want<'_>,
    timeout: Duration,
) -> Result<Prepared, PrepareError> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(PrepareError::Runtime)?;
    rt.block_on(prepare_restore_async(socket, want, timeout))
}

async fn prepare_restore_async(
    socket: &Path,
    want: &Want<'_>,
    timeout: Duration,
) -> Result<Prepared, PrepareError> {
    let snapshot = want.snapshot;
    let unreachable = |reason: String| PrepareError::Unreachable {
        socket: socket.to_path_buf(),
        reason,
    };
    let endpoint = unix_endpoint().connect_timeout(CONNECT_TIMEOUT);
    let connect = connect_unix_with(endpoint, socket);
    let channel = match tokio::time::timeout(CONNECT_TIMEOUT, connect).await {
        Ok(Ok(c)) => c,
        Ok(Err(e)) => return Err(unreachable(error_chain(&e))),
        Err(_) => return Err(unreachable("connect timed out".into())),
    };
    let mut client = PodsnapClient::new(channel);
    let request = PrepareRestoreRequest {
        snapshot_id: snapshot.to_string(),
        container_id: want.container_id.to_string(),
        runsc_root: want
            .runsc_root
            .map(|r| r.display().to_string())
            .unwrap_or_default(),
        background: want.background,
    };
    let reply = match tokio::time::timeout(timeout, client.prepare_restore(request)).await {
        Err(_) => {
            return Err(PrepareError::Timeout {
                snapshot: snapshot.to_string(),
                timeout,
            })
        }
        // A status with a source was made on this side: the connection broke.
        Ok(Err(status)) if std::error::Error::source(&status).is_some() => {
            let cause = std::error::Error::source(&status).map(error_chain);
            return Err(unreachable(cause.unwrap_or_default()));
        }
        Ok(Err(status)) => {
            return Err(PrepareError::Refused {
                code: code_name(status.code()),
                message: one_line(status.message()),
            })
        }
        Ok(Ok(r)) => r.into_inner(),
    };
    if reply.image_dir.is_empty() {
        return Err(PrepareError::NoImageDir {
            snapshot: snapshot.to_string(),
        });
    }
    let info = reply.snapshot.unwrap_or_default();
    // The manifest's pod record, else the source node's note of the pod (`namespace/name`),
    // which checkpoints of pods made before containers were recorded carry.
    let noted = info
        .source
        .as_ref()
        .and_then(|s| s.extra.get("pod"))
        .and_then(|p| p.split_once('/'))
        .map(|(ns, name)| (ns.to_string(), name.to_string()));
    let pod = info
        .pod
        .map(|p| (p.namespace, p.name))
        .or(noted)
        .map(|(namespace, name)| crate::pod::PodSnapshot {
            snapshot_id: snapshot.to_string(),
            namespace,
            name,
            containers: info
                .containers
                .iter()
                .filter(|c| c.role == "container")
                .map(|c| c.name.clone())
                .collect(),
        });
    Ok(Prepared {
        image_dir: PathBuf::from(reply.image_dir),
        lazy: reply.lazy,
        pod,
        containers: info.containers.len(),
    })
}

/// Collapses a message to one line.
pub fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_socket_is_reported_with_its_path_and_cause() {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("none.sock");
        let e =
            prepare_restore(&sock, &Want::pulled("s1", "c1"), Duration::from_secs(5)).unwrap_err();
        let msg = e.to_string();
        assert!(
            msg.starts_with(&format!("cannot reach podsnapd at {}", sock.display())),
            "{msg}"
        );
        assert!(msg.contains("No such file or directory"), "{msg}");
    }

    #[test]
    fn messages_collapse_to_one_line() {
        assert_eq!(one_line("a\nb  c\n"), "a b c");
    }
}
