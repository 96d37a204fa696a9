//! podsnap-runtime: everything podsnap knows about the sandbox runtime on a node.
//!
//! Layers, bottom up:
//!
//! - [`runsc`]: a typed client of the `runsc` CLI in the manner of containerd's `runc` crate
//!   (global flags from a builder, one options struct per subcommand, per-call timeouts,
//!   errors carrying exit status and stderr) plus durable jobs that outlive the daemon.
//! - [`image`]: the bounded reader of the `gVisorSF` header of runsc's `checkpoint.img`.
//! - [`rootdir`]: what runsc keeps in its `--root` (state files: sandbox membership, bundle,
//!   spec) and what a sandbox process was started with (rootfs overlay).
//! - [`containerd`]: lazy gRPC client of containerd 1.6 (containers, tasks, version) that maps
//!   a containerd container to its runsc root, sandbox and Kubernetes pod.
//! - [`runtime`]: the object-safe [`SandboxRuntime`] trait the daemon drives, its domain types
//!   and the real implementation [`RunscRuntime`].
//! - [`volumes`]: a runc-shim pod's emptyDirs and `/dev/shm`, which its checkpoint does not
//!   save: found in its containers' specs and packed into the image while it is paused.
//! - `testing` (feature `test-util`): `FakeRuntime`, a scripted, recording double.
//!
//! What runsc 20221219 cannot do is refused here with a clear [`RuntimeError::Unsupported`]
//! rather than attempted: checkpointing multi-container sandboxes, and `--leave-running` under
//! containerd.

pub mod containerd;
pub mod image;
pub mod policy;
pub mod rootdir;
pub mod runsc;
pub mod runtime;
#[cfg(any(test, feature = "test-util"))]
pub mod testing;
pub mod volumes;

pub use containerd::{ContainerdClient, ContainerdConfig, ContainerdError, PodInfo, TaskStatus};
pub use image::{read_header, read_header_file, read_image_dir_header, HeaderError, ImageHeader};
pub use policy::{Manager, ReleasePolicy, ResumeMethod, Support};
pub use rootdir::RootfsOverlay;
pub use runsc::{Capabilities, Runsc, RunscBuilder, RunscVersion, Status};
pub use runtime::{
    CheckpointOpts, ContainerRestore, ContainerRole, RestoreRequest, Restored, RunscRuntime,
    RuntimeError, RuntimeInfo, Sandbox, SandboxContainer, SandboxKind, SandboxRuntime,
    SandboxState, Target,
};
