//! [`FakeRuntime`]: a scripted [`SandboxRuntime`] for the daemon's unit tests (enabled by the
//! `test-util` feature).
//!
//! It holds a table of sandboxes, answers `resolve`/`state` from it, records every call, lets a
//! test script the outcome of the next calls of an operation (an error, or a delay), and on a
//! successful checkpoint writes a small but valid image directory (`checkpoint.img` with a
//! `gVisorSF` header and some data) so the store pipeline has real files to chew on.

use crate::image;
use crate::rootdir::RootfsOverlay;
use crate::runsc::{Capabilities, RunscVersion, Status};
use crate::runtime::*;
use async_trait::async_trait;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

/// Operations of the trait, to script outcomes per operation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FakeOp {
    /// `info`.
    Info,
    /// `resolve`.
    Resolve,
    /// `checkpoint`.
    Checkpoint,
    /// `restore`.
    Restore,
    /// `state`.
    State,
    /// `delete`.
    Delete,
}

/// A recorded call.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FakeCall {
    /// `info()`.
    Info,
    /// `resolve(target)`.
    Resolve(Target),
    /// `checkpoint(sandbox id, container id, image dir, leave_running, job dir)`.
    Checkpoint {
        /// Container id.
        container_id: String,
        /// Image directory.
        image_dir: PathBuf,
        /// Whether leave-running was asked.
        leave_running: bool,
        /// Durable job directory.
        job_dir: Option<PathBuf>,
    },
    /// `restore(req)`.
    Restore {
        /// New id.
        id: String,
        /// Bundle.
        bundle: PathBuf,
        /// Image directory.
        image_dir: PathBuf,
        /// Log file.
        log_file: Option<PathBuf>,
    },
    /// `state(root, id)`.
    State(Option<PathBuf>, String),
    /// `delete(root, id, force)`.
    Delete(Option<PathBuf>, String, bool),
}

/// A scripted outcome of one call.
pub enum FakeOutcome {
    /// Fail with this error.
    Fail(RuntimeError),
    /// Wait this long, then behave normally.
    Delay(Duration),
    /// Wait this long, then fail.
    DelayThenFail(Duration, RuntimeError),
}

impl std::fmt::Debug for FakeOutcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FakeOutcome::Fail(e) => write!(f, "Fail({e})"),
            FakeOutcome::Delay(d) => write!(f, "Delay({d:?})"),
            FakeOutcome::DelayThenFail(d, e) => write!(f, "DelayThenFail({d:?}, {e})"),
        }
    }
}

#[derive(Debug, Default)]
struct State {
    sandboxes: HashMap<Target, Sandbox>,
    calls: Vec<FakeCall>,
    script: HashMap<FakeOp, VecDeque<FakeOutcome>>,
    /// Durable jobs "an earlier run of the daemon started", by job dir, with their outcome.
    earlier: HashMap<PathBuf, Result<(), RuntimeError>>,
}

/// A scripted, recording [`SandboxRuntime`].
#[derive(Debug)]
pub struct FakeRuntime {
    state: Mutex<State>,
    info: RuntimeInfo,
    root: PathBuf,
    image_bytes: usize,
}

/// A running single-container standalone sandbox for tests.
pub fn fake_sandbox(id: &str) -> Sandbox {
    Sandbox {
        root: PathBuf::from("/fake/runsc-root"),
        container_id: id.to_string(),
        sandbox_id: id.to_string(),
        kind: SandboxKind::Standalone,
        bundle: PathBuf::from(format!("/fake/bundles/{id}")),
        annotations: BTreeMap::new(),
        container_count: 1,
        containers: Vec::new(),
        platform: Some("ptrace".into()),
        status: Status::Running,
        pid: Some(4242),
        rootfs_overlay: RootfsOverlay::None,
    }
}

/// Runtime facts of a runsc 20221219 on ptrace, as the fake reports them.
pub fn fake_info() -> RuntimeInfo {
    RuntimeInfo {
        runsc_path: PathBuf::from("/usr/bin/runsc"),
        version: RunscVersion::parse("runsc version 0.0~20221219.0\nspec: 1.0.2-dev")
            .expect("fixed text parses"),
        capabilities: Capabilities {
            leave_running: true,
            ..Default::default()
        },
        platform: "ptrace".into(),
        root: PathBuf::from("/fake/runsc-root"),
        global_flags: vec!["--network=none".into()],
        rootfs_overlay: RootfsOverlay::None,
    }
}

impl Default for FakeRuntime {
    fn default() -> Self {
        Self::new()
    }
}

impl FakeRuntime {
    /// An empty fake (no sandboxes, every call succeeds).
    pub fn new() -> Self {
        FakeRuntime {
            state: Mutex::new(State::default()),
            info: fake_info(),
            root: PathBuf::from("/fake/runsc-root"),
            image_bytes: 64 * 1024,
        }
    }

    /// Replaces the reported runtime facts.
    pub fn with_info(mut self, info: RuntimeInfo) -> Self {
        self.info = info;
        self
    }

    /// Size of the data written after the header of a fake `checkpoint.img`.
    pub fn with_image_bytes(mut self, n: usize) -> Self {
        self.image_bytes = n;
        self
    }

    /// Adds a sandbox reachable through `target`.
    pub fn add_sandbox(&self, target: Target, sb: Sandbox) {
        self.lock().sandboxes.insert(target, sb);
    }

    /// Adds a running standalone sandbox `id` (resolvable as `Target::Runsc { id }`).
    pub fn add_running(&self, id: &str) -> Sandbox {
        let sb = fake_sandbox(id);
        self.add_sandbox(Target::Runsc { id: id.into() }, sb.clone());
        sb
    }

    /// Scripts the outcome of the next not-yet-scripted call of `op`.
    pub fn push_outcome(&self, op: FakeOp, outcome: FakeOutcome) {
        self.lock().script.entry(op).or_default().push_back(outcome);
    }

    /// Makes the next call of `op` fail with `err`.
    pub fn fail_next(&self, op: FakeOp, err: RuntimeError) {
        self.push_outcome(op, FakeOutcome::Fail(err));
    }

    /// Makes `job_dir` hold a durable job that an earlier run of the daemon started, which
    /// ends with `outcome` (see [`SandboxRuntime::await_earlier`]; taken once).
    pub fn add_earlier(&self, job_dir: &Path, outcome: Result<(), RuntimeError>) {
        self.lock().earlier.insert(job_dir.to_path_buf(), outcome);
    }

    /// Every call so far, in order.
    pub fn calls(&self) -> Vec<FakeCall> {
        self.lock().calls.clone()
    }

    /// The status the fake holds for a standalone container id.
    pub fn status_of(&self, id: &str) -> Option<Status> {
        self.lock()
            .sandboxes
            .values()
            .find(|s| s.container_id == id)
            .map(|s| s.status.clone())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    async fn enter(&self, op: FakeOp, call: FakeCall) -> Result<(), RuntimeError> {
        let next = {
            let mut st = self.lock();
            st.calls.push(call);
            st.script.get_mut(&op).and_then(VecDeque::pop_front)
        };
        match next {
            None => Ok(()),
            Some(FakeOutcome::Fail(e)) => Err(e),
            Some(FakeOutcome::Delay(d)) => {
                tokio::time::sleep(d).await;
                Ok(())
            }
            Some(FakeOutcome::DelayThenFail(d, e)) => {
                tokio::time::sleep(d).await;
                Err(e)
            }
        }
    }

    fn write_image(&self, dir: &Path) -> std::io::Result<()> {
        std::fs::create_dir_all(dir)?;
        let mut meta = BTreeMap::new();
        meta.insert("_timestamp".to_string(), "fake".to_string());
        meta.insert("cpu_usage".to_string(), "1ms".to_string());
        use std::io::Write;
        // Streamed, so that many fake checkpoints at once take little memory.
        let mut out = std::io::BufWriter::with_capacity(
            64 << 10,
            std::fs::File::create(dir.join(image::CHECKPOINT_FILE))?,
        );
        out.write_all(&image::encode_header(&meta))?;
        // Deterministic, mostly incompressible filler with an all-zero stretch.
        let mut x: u32 = 0x2545_f491;
        for i in 0..self.image_bytes {
            let b = if (i / 4096) % 4 == 3 {
                0
            } else {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                x as u8
            };
            out.write_all(&[b])?;
        }
        out.into_inner().map_err(|e| e.into_error())?.sync_all()
    }
}

fn same_root(a: Option<&Path>, b: &Path) -> bool {
    a.is_none_or(|a| a == b)
}

#[async_trait]
impl SandboxRuntime for FakeRuntime {
    async fn info(&self) -> Result<RuntimeInfo, RuntimeError> {
        self.enter(FakeOp::Info, FakeCall::Info).await?;
        Ok(self.info.clone())
    }

    async fn resolve(&self, target: &Target) -> Result<Sandbox, RuntimeError> {
        self.enter(FakeOp::Resolve, FakeCall::Resolve(target.clone()))
            .await?;
        self.lock()
            .sandboxes
            .get(target)
            .cloned()
            .ok_or_else(|| RuntimeError::NotFound {
                target: target.to_string(),
            })
    }

    async fn checkpoint(
        &self,
        sb: &Sandbox,
        image_dir: &Path,
        opts: &CheckpointOpts,
    ) -> Result<(), RuntimeError> {
        self.enter(
            FakeOp::Checkpoint,
            FakeCall::Checkpoint {
                container_id: sb.container_id.clone(),
                image_dir: image_dir.to_path_buf(),
                leave_running: opts.leave_running,
                job_dir: opts.job_dir.clone(),
            },
        )
        .await?;
        if sb.container_count > 1 {
            return Err(RuntimeError::Unsupported {
                op: "checkpoint",
                target: sb.container_id.clone(),
                reason: "multi-container sandbox".into(),
            });
        }
        self.write_image(image_dir).map_err(|e| RuntimeError::Io {
            context: format!("writing fake image to {}", image_dir.display()),
            source: e,
        })?;
        if !opts.leave_running {
            let mut st = self.lock();
            for s in st.sandboxes.values_mut() {
                if s.container_id == sb.container_id && s.root == sb.root {
                    s.status = Status::Stopped;
                    s.pid = None;
                }
            }
        }
        Ok(())
    }

    async fn await_earlier(
        &self,
        job_dir: &Path,
        _timeout: Option<Duration>,
    ) -> Result<bool, RuntimeError> {
        match self.lock().earlier.remove(job_dir) {
            None => Ok(false),
            Some(outcome) => outcome.map(|()| true),
        }
    }

    async fn restore(&self, req: &RestoreRequest) -> Result<Restored, RuntimeError> {
        self.enter(
            FakeOp::Restore,
            FakeCall::Restore {
                id: req.id.clone(),
                bundle: req.bundle.clone(),
                image_dir: req.image_dir.clone(),
                log_file: req.log_file.clone(),
            },
        )
        .await?;
        image::read_image_dir_header(&req.image_dir).map_err(|source| RuntimeError::Image {
            dir: req.image_dir.clone(),
            source,
        })?;
        let root = req.root.clone().unwrap_or_else(|| self.root.clone());
        let mut sb = fake_sandbox(&req.id);
        sb.root = root.clone();
        sb.bundle = req.bundle.clone();
        let mut st = self.lock();
        let target = Target::Runsc { id: req.id.clone() };
        if st
            .sandboxes
            .get(&target)
            .is_some_and(|s| s.status != Status::Stopped)
        {
            return Err(RuntimeError::InvalidRequest(format!(
                "container {} already exists",
                req.id
            )));
        }
        st.sandboxes.insert(target, sb.clone());
        Ok(Restored {
            id: req.id.clone(),
            root,
            pid: sb.pid,
            status: Status::Running,
        })
    }

    async fn state(&self, root: Option<&Path>, id: &str) -> Result<SandboxState, RuntimeError> {
        self.enter(
            FakeOp::State,
            FakeCall::State(root.map(Path::to_path_buf), id.to_string()),
        )
        .await?;
        self.lock()
            .sandboxes
            .values()
            .find(|s| s.container_id == id && same_root(root, &s.root))
            .map(|s| SandboxState {
                id: s.container_id.clone(),
                root: s.root.clone(),
                status: s.status.clone(),
                pid: s.pid,
                bundle: s.bundle.clone(),
            })
            .ok_or_else(|| RuntimeError::NotFound {
                target: format!("runsc container {id}"),
            })
    }

    async fn delete(&self, root: Option<&Path>, id: &str, force: bool) -> Result<(), RuntimeError> {
        self.enter(
            FakeOp::Delete,
            FakeCall::Delete(root.map(Path::to_path_buf), id.to_string(), force),
        )
        .await?;
        let mut st = self.lock();
        let before = st.sandboxes.len();
        let running = st
            .sandboxes
            .values()
            .any(|s| s.container_id == id && s.status == Status::Running);
        if running && !force {
            return Err(RuntimeError::InvalidState {
                op: "delete",
                target: format!("runsc container {id}"),
                status: Status::Running,
            });
        }
        st.sandboxes
            .retain(|_, s| !(s.container_id == id && same_root(root, &s.root)));
        if st.sandboxes.len() == before {
            return Err(RuntimeError::NotFound {
                target: format!("runsc container {id}"),
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn fake_checkpoint_writes_a_valid_image_and_stops_the_sandbox() {
        let rt = FakeRuntime::new().with_image_bytes(20_000);
        rt.add_running("web");
        let sb = rt
            .resolve(&Target::Runsc { id: "web".into() })
            .await
            .unwrap();
        let dir = tempfile::tempdir().unwrap();
        rt.checkpoint(&sb, dir.path(), &CheckpointOpts::default())
            .await
            .unwrap();
        let h = image::read_image_dir_header(dir.path()).unwrap();
        assert_eq!(h.metadata.get("cpu_usage").map(String::as_str), Some("1ms"));
        let len = std::fs::metadata(dir.path().join("checkpoint.img"))
            .unwrap()
            .len();
        assert_eq!(len, h.data_offset + 20_000);
        assert_eq!(rt.status_of("web"), Some(Status::Stopped));
        assert!(matches!(rt.calls()[1], FakeCall::Checkpoint { .. }));
    }

    #[tokio::test]
    async fn scripted_failures_are_returned_once_in_order() {
        let rt = FakeRuntime::new();
        rt.add_running("a");
        rt.fail_next(FakeOp::Resolve, RuntimeError::InvalidRequest("boom".into()));
        let t = Target::Runsc { id: "a".into() };
        assert!(rt.resolve(&t).await.is_err());
        assert!(rt.resolve(&t).await.is_ok());
        assert!(matches!(
            rt.resolve(&Target::Runsc { id: "zz".into() }).await,
            Err(RuntimeError::NotFound { .. })
        ));
    }

    #[tokio::test]
    async fn fake_restore_needs_an_image_and_registers_the_new_sandbox() {
        let rt = FakeRuntime::new();
        let dir = tempfile::tempdir().unwrap();
        let req = RestoreRequest {
            id: "new".into(),
            bundle: "/b".into(),
            image_dir: dir.path().into(),
            ..Default::default()
        };
        assert!(matches!(
            rt.restore(&req).await,
            Err(RuntimeError::Image { .. })
        ));
        let sb = rt.add_running("old");
        rt.checkpoint(&sb, dir.path(), &CheckpointOpts::default())
            .await
            .unwrap();
        let r = rt.restore(&req).await.unwrap();
        assert_eq!(r.status, Status::Running);
        assert_eq!(rt.state(None, "new").await.unwrap().status, Status::Running);
        rt.delete(None, "new", true).await.unwrap();
        assert!(rt.state(None, "new").await.is_err());
    }

    #[tokio::test]
    async fn multi_container_sandboxes_are_refused() {
        let rt = FakeRuntime::new();
        let mut sb = fake_sandbox("pod");
        sb.container_count = 2;
        let dir = tempfile::tempdir().unwrap();
        let err = rt
            .checkpoint(&sb, dir.path(), &CheckpointOpts::default())
            .await
            .unwrap_err();
        assert!(matches!(err, RuntimeError::Unsupported { .. }));
    }

    #[tokio::test]
    async fn earlier_jobs_are_taken_once_with_their_outcome() {
        let rt = FakeRuntime::new();
        let (ok, failed) = (Path::new("/jobs/a"), Path::new("/jobs/b"));
        rt.add_earlier(ok, Ok(()));
        rt.add_earlier(failed, Err(RuntimeError::InvalidRequest("boom".into())));
        assert!(rt.await_earlier(ok, None).await.unwrap());
        assert!(!rt.await_earlier(ok, None).await.unwrap());
        assert!(rt.await_earlier(failed, None).await.is_err());
        let dir = tempfile::tempdir().unwrap();
        assert!(matches!(
            rt.open_image(dir.path()),
            Err(RuntimeError::Image { .. })
        ));
        let sb = rt.add_running("a");
        rt.checkpoint(&sb, dir.path(), &CheckpointOpts::default())
            .await
            .unwrap();
        let image = rt.open_image(dir.path()).unwrap();
        assert_eq!(image.dir, dir.path());
        assert_eq!(
            image.metadata.get("cpu_usage").map(String::as_str),
            Some("1ms")
        );
    }

    #[tokio::test]
    async fn fake_is_usable_as_a_trait_object() {
        let rt: std::sync::Arc<dyn SandboxRuntime> = std::sync::Arc::new(FakeRuntime::new());
        assert_eq!(rt.info().await.unwrap().platform, "ptrace");
    }
}
