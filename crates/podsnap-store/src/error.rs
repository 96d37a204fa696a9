//! The one error type of this crate. Messages are lowercase, carry the object or file they
//! concern, and never repeat their `#[source]`.

use std::path::PathBuf;

/// Everything that can go wrong talking to a snapshot store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The store URL could not be understood. `url` is already redacted.
    #[error("invalid store url {url}: {reason}")]
    InvalidUrl { url: String, reason: String },

    /// The object store client could not be built (bad configuration or credentials).
    #[error("cannot configure store {url}")]
    Configure {
        url: String,
        #[source]
        source: Box<object_store::Error>,
    },

    /// A request to the object store failed (after the client's bounded retries).
    #[error("store {url}: cannot {op} {path}")]
    Backend {
        url: String,
        op: &'static str,
        path: String,
        #[source]
        source: Box<object_store::Error>,
    },

    /// The snapshot id is not acceptable.
    #[error("invalid snapshot id {id:?}: {reason}")]
    InvalidSnapshotId { id: String, reason: String },

    /// No manifest exists for this snapshot.
    #[error("snapshot {0} not found")]
    SnapshotNotFound(String),

    /// A different snapshot with this id was already committed.
    #[error("snapshot id {0} already exists")]
    SnapshotExists(String),

    /// A manifest was refused while reading or validating it.
    #[error("invalid manifest for snapshot {id}: {reason}")]
    InvalidManifest { id: String, reason: String },

    /// The manifest's major format version is not one this build understands.
    #[error("snapshot {id} has unsupported format version {version} (this build reads 1.x)")]
    UnsupportedFormat { id: String, version: String },

    /// A per-file index object was refused.
    #[error("invalid index for {file}: {reason}")]
    InvalidIndex { file: String, reason: String },

    /// Data read back from the store does not match what the index promises.
    #[error("corrupt data for {file} at offset {offset}: {reason}")]
    Corrupt {
        file: String,
        offset: u64,
        reason: String,
    },

    /// An object that the snapshot references does not exist in the store.
    #[error("missing object {object} for {file} at offset {offset}")]
    MissingObject {
        file: String,
        offset: u64,
        object: String,
    },

    /// A local file operation failed.
    #[error("cannot {op} {}", path.display())]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// The pull destination already holds something.
    #[error("destination {} exists and is not an empty directory", .0.display())]
    DestinationNotEmpty(PathBuf),

    /// The push source holds something that is not a regular file or directory.
    #[error("unsupported file {}: {kind} (only regular files and directories are pushed)", path.display())]
    UnsupportedFile { path: PathBuf, kind: &'static str },

    /// The push source or a hostile manifest exceeds a hard limit of the format.
    #[error("limit exceeded: {0}")]
    Limit(String),

    /// A key file could not be used. Never carries key material.
    #[error("key file {}: {reason}", path.display())]
    KeyFile { path: PathBuf, reason: String },

    /// The snapshot's encryption does not fit the keys configured here.
    #[error("snapshot {id}: {reason}")]
    Encryption { id: String, reason: String },

    /// The node-local page cache cannot do what was asked (none configured, or an
    /// encrypted snapshot, whose pages are never cached).
    #[error("page cache: {0}")]
    Cache(String),

    /// The writer of a followed push source failed or went away before it finished.
    #[error("the image being pushed was not finished: {0}")]
    WriterFailed(String),

    /// A CPU worker failed.
    #[error("internal worker failed: {0}")]
    Worker(String),

    /// A worker task panicked or was cancelled.
    #[error("internal task failed")]
    Task(#[source] tokio::task::JoinError),
}

impl StoreError {
    pub(crate) fn io(op: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        StoreError::Io {
            op,
            path: path.into(),
            source,
        }
    }
}
