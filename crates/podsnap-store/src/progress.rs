//! Progress reporting for push and pull. Events are increments; a consumer sums them.

/// One progress event.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ProgressEvent {
    /// The operation starts; `total_bytes` is the sum of the files' sizes.
    Started {
        total_bytes: u64,
    },
    FileStarted {
        path: String,
        size: u64,
    },
    /// Bytes read from local files (push).
    BytesRead(u64),
    /// Bytes sent to the store (push).
    BytesUploaded(u64),
    /// Bytes received from the store (pull).
    BytesDownloaded(u64),
    /// Bytes of file content written or recognised as holes (pull).
    BytesWritten(u64),
    /// Bytes of pages taken from the node's page cache instead of the store (pull), or
    /// found already cached (prefetch). Always also sent as `BytesWritten`.
    BytesCached(u64),
    FileFinished {
        path: String,
    },
    /// Everything is uploaded or written; the manifest is being committed (push) or the
    /// directory renamed into place (pull).
    Committing,
}

/// Receives progress events. Called from the task driving the operation; keep it cheap.
pub trait Progress: Send + Sync {
    fn event(&self, ev: ProgressEvent);
}

/// Ignores every event.
#[derive(Clone, Copy, Debug, Default)]
pub struct NoProgress;

impl Progress for NoProgress {
    fn event(&self, _ev: ProgressEvent) {}
}
