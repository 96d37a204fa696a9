//! podsnap-lazy: a snapshot's image as a read-only FUSE filesystem whose every byte was
//! verified before runsc reads it, so that `runsc restore --background` can start before the
//! pages have arrived.
//!
//! # Layers
//!
//! * podsnap-store's [`LazyImage`] does the work that matters for correctness: it knows every
//!   page's sha256 from the snapshot's verified index, fetches a blob (ranged GET of its pack,
//!   or the node's page cache) the first time one of its pages is asked for, verifies every page
//!   and writes it into a local sparse file, and only then answers from that file. One fetch per
//!   blob however many readers wait for it.
//! * [`Registry`] (`registry`) shares one `LazyImage` per snapshot among the node's restores
//!   (a golden snapshot restored N times is downloaded once), runs its background fill (the
//!   group's hot pages first, read from the store) once a restore says runsc has started, and once the image is complete (and at
//!   least 5 s after it was opened) records the order in which its readers touched pages as
//!   the group's new hot pages.
//! * [`LazyMount`] (`fs`) serves one image at one mount point: a flat directory of the image's
//!   files, read-only, every `read` answered through [`LazyImage::read`] on a tokio runtime.
//!   A page that cannot be fetched or verified answers `EIO` (and fails the image, which the
//!   daemon watches to stop the sandbox). The mount is made with `mount(2)` (type `fuse`,
//!   `fd=N,rootmode=40000,...`; root only, no `fusermount`), and removed with a lazy unmount
//!   ([`LazyMount::unmount`], or on drop): a file runsc still holds stays readable until it is
//!   closed.

mod fs;
mod registry;

pub use fs::{fuse_available, lazy_mount_points, unmount_stale, LazyMount};
pub use podsnap_store::{LazyImage, LazyProgress, LazyStatus};
pub use registry::{is_lazy_file, ImageLease, Registry};

use std::path::PathBuf;

/// The file runsc reads pages from; the only file served before it is local.
pub const PAGES_FILE: &str = "pages.img";

/// Errors of lazy images and their mounts.
#[derive(Debug, thiserror::Error)]
pub enum LazyError {
    #[error(transparent)]
    Store(#[from] podsnap_store::StoreError),
    #[error("fetching the image's small files failed")]
    Fetch(#[source] std::sync::Arc<podsnap_store::StoreError>),
    #[error("{0}")]
    Unsupported(String),
    #[error("{context}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    #[error("mounting {path}")]
    Mount {
        path: PathBuf,
        #[source]
        source: nix::Error,
    },
}
