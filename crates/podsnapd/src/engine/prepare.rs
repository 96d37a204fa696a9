//! PrepareRestore, the Kubernetes path: manifest -> compatibility (before any chunk is
//! fetched) -> the image in `<state-dir>/prepared/`, whose path the runsc wrapper hands to
//! `runsc restore`.
//!
//! Two ways to have that image. Pulled: every file fetched and verified (durable) before the
//! answer. Lazy, when the wrapper restores with `--background`, names the runsc root its
//! sandbox runs under, and nothing is against it ([`eager_reason`]): the small files are
//! fetched and verified and the directory is a read-only mount that podsnapd serves, each page
//! verified before runsc sees it. The job then follows the sandbox (see
//! [`Engine::follow_lazy`]): the rest of the pages come once the sandbox is created, a page
//! that fails stops it, and the mount goes when the sandbox does.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use podsnap_store::Manifest;
use tracing::{info, info_span, warn};

use super::restore::{Followed, PullFor};
use super::{snapshot_id, Engine};
use crate::error::{DaemonError, Result};
use crate::jobs::{JobSpec, PrepareJob};

/// What the runsc wrapper asks for.
#[derive(Clone, Debug, Default)]
pub struct PrepareSpec {
    pub snapshot: String,
    /// The container being restored (names the directory; may be empty).
    pub container_id: String,
    /// The runsc root that container runs under.
    pub runsc_root: Option<PathBuf>,
    /// The wrapper restores with `runsc restore --background`.
    pub background: bool,
}

/// The image PrepareRestore gave.
#[derive(Clone, Debug)]
pub struct PreparedImage {
    pub manifest: Manifest,
    pub image_dir: PathBuf,
    /// Served lazily (a mount that lives while the sandbox does).
    pub lazy: bool,
}

impl Engine {
    /// Fetches, verifies and checks a snapshot for the runsc wrapper; returns the image
    /// directory (under `<state-dir>/prepared/`).
    pub async fn prepare_restore(self: Arc<Self>, spec: PrepareSpec) -> Result<PreparedImage> {
        let span = info_span!("prepare-restore", snapshot = %spec.snapshot, container = %spec.container_id);
        let work = self.clone().run_prepare(spec);
        self.operation("prepare-restore", span, work).await
    }

    async fn run_prepare(self: Arc<Self>, spec: PrepareSpec) -> Result<PreparedImage> {
        let id = snapshot_id(&spec.snapshot)?;
        let container_id = &spec.container_id;
        if !container_id.is_empty()
            && !container_id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
        {
            return Err(DaemonError::InvalidArgument(format!(
                "container id {container_id:?} must be [A-Za-z0-9_.-]"
            )));
        }
        // The job first: a refusal (unknown snapshot, incompatible node) is a failed job the
        // controller can read, not only an error to the wrapper.
        let job = self
            .jobs
            .start(
                JobSpec::PrepareRestore(PrepareJob {
                    runsc_root: spec.runsc_root.clone(),
                    lazy: false,
                }),
                container_id.clone(),
                Some(id.to_string()),
            )
            .map_err(|e| DaemonError::io("writing the job record", e))?;
        let checked = async {
            let m = self.store.manifest(&id).await?;
            self.require_compatible(&m).await?;
            let against = self.prepare_eager_reason(&spec, &m).await?;
            Ok::<_, DaemonError>((m, against))
        };
        let (m, against) = match checked.await {
            Ok(v) => v,
            Err(e) => {
                job.finish(Some(e.message()));
                return Err(e);
            }
        };
        let name = if container_id.is_empty() {
            format!("{id}--{}", job.id)
        } else {
            format!("{id}--{container_id}")
        };
        let dest = self.cfg.prepared_dir().join(name);
        if dest.exists() {
            // A retried create: an earlier lazy image there is unmounted first.
            podsnap_lazy::unmount_stale(&dest);
            std::fs::remove_dir_all(&dest)
                .map_err(|e| DaemonError::io(format!("removing {}", dest.display()), e))?;
        }
        if against.is_none() {
            match self.mount_prepared(&job, &id, &dest).await {
                Ok(mount) => {
                    let sandbox = Followed {
                        root: spec.runsc_root.clone(),
                        id: container_id.clone(),
                        appears_later: true,
                    };
                    self.clone().follow_lazy(job, mount, sandbox, dest.clone());
                    return Ok(PreparedImage {
                        manifest: m,
                        image_dir: dest,
                        lazy: true,
                    });
                }
                Err(Unserved::Elsewhere(reason)) => {
                    if let Err(e) = self.unless_lazy_required("prepare", &m, Some(reason.clone())) {
                        job.finish(Some(e.message()));
                        return Err(e);
                    }
                    warn!(%reason, "pulling the whole image instead of serving it lazily");
                }
                Err(Unserved::Failed(e)) => {
                    let _ = std::fs::remove_dir_all(&dest);
                    job.finish(Some(e.message()));
                    return Err(e);
                }
            }
        } else if let Some(reason) = &against {
            info!(%reason, "pulling the whole image before runsc restore (not lazy)");
        }
        let res = self.fetch(&job, &m, &dest, PullFor::Prepare, &None).await;
        job.finish(res.as_ref().err().map(DaemonError::message));
        res?;
        Ok(PreparedImage {
            manifest: m,
            image_dir: dest,
            lazy: false,
        })
    }

    /// Mounts the lazy image at `dest` and checks that the node's runsc will see it.
    async fn mount_prepared(
        &self,
        job: &crate::jobs::JobHandle,
        id: &podsnap_store::SnapshotId,
        dest: &Path,
    ) -> std::result::Result<podsnap_lazy::LazyMount, Unserved> {
        let mount = self
            .mount_lazy(job, id, dest, &None)
            .await
            .map_err(Unserved::Failed)?;
        if let Err(reason) = visible_to_host(dest) {
            job.set_lazy(false);
            drop(mount);
            let _ = std::fs::remove_dir_all(dest);
            return Err(Unserved::Elsewhere(reason));
        }
        Ok(mount)
    }

    /// Why this prepared image is pulled whole rather than served lazily (`None`: lazy);
    /// an error when `--lazy-restore always` cannot be honoured.
    async fn prepare_eager_reason(
        &self,
        spec: &PrepareSpec,
        m: &Manifest,
    ) -> Result<Option<String>> {
        let caller = if !spec.background {
            Some("the runsc wrapper restores without --background".to_string())
        } else if spec.runsc_root.is_none() || spec.container_id.is_empty() {
            Some(
                "the runsc wrapper did not name the container and runsc root that restore"
                    .to_string(),
            )
        } else {
            None
        };
        self.lazy_refusal("prepare", m, 0, caller).await
    }
}

/// Why a prepared image was not served lazily after all.
enum Unserved {
    /// The mount works here but not where runsc reads (pull it instead).
    Elsewhere(String),
    /// Fetching or mounting failed.
    Failed(DaemonError),
}

/// Whether the lazy mount at `dir` is seen in the host's mount namespace (PID 1's; podsnapd's
/// pod has the host's PIDs), where the shim's runsc opens the image: a podsnapd in a pod
/// whose state dir lacks `mountPropagation: Bidirectional` mounts where runsc cannot see.
fn visible_to_host(dir: &Path) -> std::result::Result<(), String> {
    // Where PID 1's namespace cannot be read (some VMs guard PID 1), nothing can be told:
    // podsnapd runs on the host there, or the restore says what went wrong.
    let (Ok(ours), Ok(host)) = (
        std::fs::read_link("/proc/self/ns/mnt"),
        std::fs::read_link("/proc/1/ns/mnt"),
    ) else {
        return Ok(());
    };
    if ours == host {
        return Ok(());
    }
    let text = std::fs::read_to_string("/proc/1/mountinfo")
        .map_err(|e| format!("cannot read the host's mounts: {e}"))?;
    if podsnap_lazy::lazy_mount_points(&text)
        .iter()
        .any(|p| p == dir)
    {
        Ok(())
    } else {
        Err(format!(
            "the image mount at {} does not reach the host's mount namespace (mount \
             podsnapd's state dir with mountPropagation: Bidirectional)",
            dir.display()
        ))
    }
}
