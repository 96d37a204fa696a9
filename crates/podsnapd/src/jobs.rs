//! Jobs: every checkpoint and restore is a job with a durable record under
//! `<state-dir>/jobs/<job-id>/job.json`, written (fsync + rename) before each phase acts, so a
//! restarted daemon knows what was in flight and can finish or roll back. The in-memory
//! registry keeps in-flight and recent jobs for `ListJobs` and progress.
//!
//! A record's `kind` and `details` hold its [`JobSpec`]: what the job does and what recovery
//! needs to finish it, including the stages already done. The layout on disk is the one every
//! earlier release wrote and read (`tests/fixtures/jobs/` holds records written by them).

use std::collections::{BTreeMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use podsnap_runtime::Sandbox;
use podsnap_store::SnapshotId;
use serde::{Deserialize, Serialize};

/// Phase of a job; mirrors the proto's `Phase`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    Queued,
    Resolving,
    Checkpointing,
    Uploading,
    Committing,
    Retention,
    Resuming,
    Checking,
    Downloading,
    Restoring,
    Done,
    Failed,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum JobKind {
    Checkpoint,
    Restore,
    PrepareRestore,
    Prefetch,
}

impl JobKind {
    pub fn as_str(self) -> &'static str {
        match self {
            JobKind::Checkpoint => "checkpoint",
            JobKind::Restore => "restore",
            JobKind::PrepareRestore => "prepare-restore",
            JobKind::Prefetch => "prefetch",
        }
    }
}

/// What a job does: its kind and what recovery needs to carry it to the end. On disk, the
/// tag is the record's `kind` and the content its `details`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", content = "details", rename_all = "kebab-case")]
pub enum JobSpec {
    /// Boxed: a resolved sandbox is several hundred bytes.
    Checkpoint(Box<CheckpointJob>),
    Restore(RestoreJob),
    PrepareRestore(PrepareJob),
    /// Warming the node's page cache: nothing to recover (a restart fails it).
    Prefetch(PrepareJob),
}

impl JobSpec {
    pub fn kind(&self) -> JobKind {
        match self {
            JobSpec::Checkpoint(_) => JobKind::Checkpoint,
            JobSpec::Restore(_) => JobKind::Restore,
            JobSpec::PrepareRestore(_) => JobKind::PrepareRestore,
            JobSpec::Prefetch(_) => JobKind::Prefetch,
        }
    }
}

/// A checkpoint: the resolved sandbox, where its snapshot goes, what becomes of the sandbox,
/// and the last stage done.
///
/// On disk the record also keeps the fields of the release before explicit stages (`resume`,
/// `leave_running`, `checkpointed`, `resumed`): a record that release wrote is read here, and a
/// record written here is still read (and recovered) by that release.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(from = "CheckpointOnDisk", into = "CheckpointOnDisk")]
pub struct CheckpointJob {
    pub sandbox: Sandbox,
    pub group: String,
    pub labels: BTreeMap<String, String>,
    /// The group's retention (0: keep all).
    pub keep: u32,
    pub parent: Option<SnapshotId>,
    /// What becomes of the sandbox once runsc wrote its image, decided before it is touched.
    pub after: AfterCheckpoint,
    /// The last stage done: a re-run after a restart goes on from the next one.
    pub stage: CheckpointStage,
}

pub use podsnap_runtime::runtime::AfterCheckpoint;

/// The stages of a checkpoint, in order. Each is recorded once done; a re-run after a
/// restart goes on from the next. `Resumed` is a stage only of [`AfterCheckpoint::RestoreInPlace`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CheckpointStage {
    /// The sandbox is resolved and the job recorded; nothing touched yet.
    Resolved,
    /// runsc wrote the image into the work dir.
    Checkpointed,
    /// The stopped sandbox was restored in place.
    Resumed,
    /// The snapshot's manifest is in the store.
    Committed,
}

/// [`CheckpointJob`] as stored in the record's `details`.
#[derive(Serialize, Deserialize)]
struct CheckpointOnDisk {
    sandbox: Sandbox,
    group: String,
    labels: BTreeMap<String, String>,
    keep: u32,
    resume: bool,
    parent: Option<SnapshotId>,
    leave_running: bool,
    #[serde(default, skip_serializing_if = "is_false")]
    checkpointed: bool,
    #[serde(default, skip_serializing_if = "is_false")]
    resumed: bool,
    /// Absent in records of the release before explicit stages: derived from the flags.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    stage: Option<CheckpointStage>,
}

impl From<CheckpointOnDisk> for CheckpointJob {
    fn from(d: CheckpointOnDisk) -> CheckpointJob {
        let after = match (d.resume, d.leave_running) {
            (_, true) => AfterCheckpoint::LeaveRunning,
            (true, false) => AfterCheckpoint::RestoreInPlace,
            (false, false) => AfterCheckpoint::Stop,
        };
        let stage = d.stage.unwrap_or(match (d.checkpointed, d.resumed) {
            (_, true) => CheckpointStage::Resumed,
            (true, false) => CheckpointStage::Checkpointed,
            (false, false) => CheckpointStage::Resolved,
        });
        CheckpointJob {
            sandbox: d.sandbox,
            group: d.group,
            labels: d.labels,
            keep: d.keep,
            parent: d.parent,
            after,
            stage,
        }
    }
}

impl From<CheckpointJob> for CheckpointOnDisk {
    fn from(c: CheckpointJob) -> CheckpointOnDisk {
        CheckpointOnDisk {
            sandbox: c.sandbox,
            group: c.group,
            labels: c.labels,
            keep: c.keep,
            resume: c.after != AfterCheckpoint::Stop,
            parent: c.parent,
            leave_running: c.after == AfterCheckpoint::LeaveRunning,
            checkpointed: c.stage >= CheckpointStage::Checkpointed,
            resumed: c.after == AfterCheckpoint::RestoreInPlace
                && c.stage >= CheckpointStage::Resumed,
            stage: Some(c.stage),
        }
    }
}

fn is_false(b: &bool) -> bool {
    !*b
}

/// A standalone restore under the daemon's runsc root.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RestoreJob {
    pub bundle: PathBuf,
    pub container_id: String,
    /// runsc reads the image through this daemon's lazy FUSE mount: a restart loses the
    /// mount, so recovery stops such a sandbox unless its job finished.
    #[serde(default, skip_serializing_if = "is_false")]
    pub lazy: bool,
}

/// A restore prepared for the runsc wrapper. A pulled image needs nothing recovered (a
/// restart fails the job); a lazily served one loses its server with the daemon, so recovery
/// stops the sandbox reading it (the job's target, under `runsc_root`).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct PrepareJob {
    /// The runsc root the wrapper named for the sandbox.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub runsc_root: Option<PathBuf>,
    /// The image is served lazily by this daemon.
    #[serde(default, skip_serializing_if = "is_false")]
    pub lazy: bool,
}

/// The durable and reported state of one job.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "OnDisk", into = "OnDisk")]
pub struct JobRecord {
    pub id: String,
    pub spec: JobSpec,
    pub target: String,
    pub snapshot_id: Option<String>,
    pub phase: Phase,
    pub bytes_done: u64,
    pub bytes_total: u64,
    pub started_at: String,
    pub finished_at: Option<String>,
    pub error: Option<String>,
}

impl JobRecord {
    pub fn kind(&self) -> JobKind {
        self.spec.kind()
    }
}

/// A record as stored in `job.json`: the spec's tag and content are the record's `kind` and
/// `details` fields.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct OnDisk {
    id: String,
    kind: JobKind,
    target: String,
    snapshot_id: Option<String>,
    phase: Phase,
    bytes_done: u64,
    bytes_total: u64,
    started_at: String,
    finished_at: Option<String>,
    error: Option<String>,
    #[serde(default)]
    details: serde_json::Value,
}

impl TryFrom<OnDisk> for JobRecord {
    type Error = String;

    fn try_from(d: OnDisk) -> Result<Self, String> {
        let details = match d.details {
            serde_json::Value::Null => serde_json::json!({}),
            v => v,
        };
        let spec: JobSpec =
            serde_json::from_value(serde_json::json!({ "kind": d.kind, "details": details }))
                .map_err(|e| format!("the details of a {} job: {e}", d.kind.as_str()))?;
        Ok(JobRecord {
            id: d.id,
            spec,
            target: d.target,
            snapshot_id: d.snapshot_id,
            phase: d.phase,
            bytes_done: d.bytes_done,
            bytes_total: d.bytes_total,
            started_at: d.started_at,
            finished_at: d.finished_at,
            error: d.error,
        })
    }
}

impl From<JobRecord> for OnDisk {
    fn from(r: JobRecord) -> OnDisk {
        let kind = r.spec.kind();
        let details = match serde_json::to_value(&r.spec) {
            Ok(serde_json::Value::Object(mut m)) => m.remove("details").unwrap_or_default(),
            _ => serde_json::Value::Null,
        };
        OnDisk {
            id: r.id,
            kind,
            target: r.target,
            snapshot_id: r.snapshot_id,
            phase: r.phase,
            bytes_done: r.bytes_done,
            bytes_total: r.bytes_total,
            started_at: r.started_at,
            finished_at: r.finished_at,
            error: r.error,
            details,
        }
    }
}

pub fn now_rfc3339() -> String {
    time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

/// Job ids sort by start time: `<unix-millis hex>-<random>`.
pub fn new_job_id() -> String {
    let ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or(0);
    format!("{ms:012x}-{:08x}", rand_u32())
}

fn rand_u32() -> u32 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0),
    );
    h.finish() as u32
}

const RECENT: usize = 64;

#[derive(Clone)]
pub struct Jobs {
    dir: PathBuf,
    inner: Arc<Mutex<VecDeque<JobRecord>>>,
    /// Serializes durable updates, so the records on disk change in the order the
    /// registry's do.
    persisting: Arc<Mutex<()>>,
}

/// A live job: updates go to the registry and, at phase changes, to disk.
#[derive(Clone)]
pub struct JobHandle {
    jobs: Jobs,
    pub id: String,
}

impl Jobs {
    pub fn new(dir: PathBuf) -> std::io::Result<Jobs> {
        std::fs::create_dir_all(&dir)?;
        Ok(Jobs {
            dir,
            inner: Arc::new(Mutex::new(VecDeque::new())),
            persisting: Arc::new(Mutex::new(())),
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn job_dir(&self, id: &str) -> PathBuf {
        self.dir.join(id)
    }

    pub fn start(
        &self,
        spec: JobSpec,
        target: String,
        snapshot_id: Option<String>,
    ) -> std::io::Result<JobHandle> {
        let rec = JobRecord {
            id: new_job_id(),
            spec,
            target,
            snapshot_id,
            phase: Phase::Queued,
            bytes_done: 0,
            bytes_total: 0,
            started_at: now_rfc3339(),
            finished_at: None,
            error: None,
        };
        std::fs::create_dir_all(self.job_dir(&rec.id))?;
        self.persist(&rec)?;
        let id = rec.id.clone();
        let mut g = self.inner.lock().expect("jobs lock");
        g.push_back(rec);
        while g.len() > RECENT {
            match g.iter().position(|j| j.finished_at.is_some()) {
                Some(i) => {
                    g.remove(i);
                }
                None => break,
            }
        }
        Ok(JobHandle {
            jobs: self.clone(),
            id,
        })
    }

    fn persist(&self, rec: &JobRecord) -> std::io::Result<()> {
        self.persist_on_disk(&OnDisk::from(rec.clone()))
    }

    fn persist_on_disk(&self, rec: &OnDisk) -> std::io::Result<()> {
        let dir = self.job_dir(&rec.id);
        let tmp = dir.join("job.json.tmp");
        let data = serde_json::to_vec_pretty(rec).map_err(std::io::Error::other)?;
        {
            use std::io::Write;
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(&data)?;
            f.sync_all()?;
        }
        std::fs::rename(&tmp, dir.join("job.json"))?;
        Ok(())
    }

    pub fn list(&self) -> Vec<JobRecord> {
        self.inner
            .lock()
            .expect("jobs lock")
            .iter()
            .cloned()
            .collect()
    }

    pub fn in_flight(&self) -> usize {
        self.inner
            .lock()
            .expect("jobs lock")
            .iter()
            .filter(|j| j.finished_at.is_none())
            .count()
    }

    /// Durable records of jobs that never finished (from an earlier run of the daemon). A
    /// record whose details cannot be read is finished on disk as failed, saying why: nothing
    /// could carry it on.
    pub fn unfinished_on_disk(&self) -> Vec<JobRecord> {
        let mut out = Vec::new();
        let Ok(rd) = std::fs::read_dir(&self.dir) else {
            return out;
        };
        for e in rd.flatten() {
            let p = e.path().join("job.json");
            let Ok(data) = std::fs::read(&p) else {
                continue;
            };
            let Ok(raw) = serde_json::from_slice::<OnDisk>(&data) else {
                continue;
            };
            if raw.finished_at.is_some() {
                continue;
            }
            match JobRecord::try_from(raw.clone()) {
                Ok(rec) => out.push(rec),
                Err(why) => {
                    tracing::warn!(job = %raw.id, error = %why, "an unfinished job's record cannot be read; it is marked failed");
                    let failed = OnDisk {
                        phase: Phase::Failed,
                        finished_at: Some(now_rfc3339()),
                        error: Some(format!(
                            "podsnapd restarted and cannot read the job record: {why}"
                        )),
                        ..raw
                    };
                    if let Err(e) = self.persist_on_disk(&failed) {
                        tracing::warn!(job = %failed.id, error = %e, "could not write job record");
                    }
                }
            }
        }
        out.sort_by(|a, b| a.id.cmp(&b.id));
        out
    }

    /// Adopts a record (from recovery) into the registry.
    pub fn adopt(&self, rec: JobRecord) -> JobHandle {
        let id = rec.id.clone();
        self.inner.lock().expect("jobs lock").push_back(rec);
        JobHandle {
            jobs: self.clone(),
            id,
        }
    }

    /// Applies `f` to job `id`. A durable update is written to disk first and only then
    /// shown by `list`: whoever sees a job finished (or in a new phase) can rely on its
    /// record on disk saying so too.
    fn update(&self, id: &str, durable: bool, f: impl Fn(&mut JobRecord)) {
        let _order = durable.then(|| self.persisting.lock().expect("jobs persist lock"));
        if durable {
            let copy = {
                let g = self.inner.lock().expect("jobs lock");
                let Some(rec) = g.iter().find(|j| j.id == id) else {
                    return;
                };
                let mut copy = rec.clone();
                f(&mut copy);
                copy
            };
            // Not under the registry's lock: listing never waits for an fsync.
            if let Err(e) = self.persist(&copy) {
                tracing::warn!(job = %id, error = %e, "could not write job record");
            }
        }
        let mut g = self.inner.lock().expect("jobs lock");
        if let Some(rec) = g.iter_mut().find(|j| j.id == id) {
            f(rec);
        }
    }
}

impl JobHandle {
    pub fn dir(&self) -> PathBuf {
        self.jobs.job_dir(&self.id)
    }

    pub fn record(&self) -> Option<JobRecord> {
        self.jobs.list().into_iter().find(|j| j.id == self.id)
    }

    pub fn phase(&self, phase: Phase) {
        self.jobs.update(&self.id, true, |r| {
            r.phase = phase;
            r.bytes_done = 0;
            r.bytes_total = 0;
        });
    }

    /// Records that a checkpoint reached `stage`, so a re-run after a restart goes on from
    /// the next one.
    pub fn stage_done(&self, stage: CheckpointStage) {
        self.jobs.update(&self.id, true, |r| {
            if let JobSpec::Checkpoint(c) = &mut r.spec {
                c.stage = stage;
            }
        });
    }

    /// Records that a restore serves its image lazily (see [`RestoreJob::lazy`]).
    pub fn mark_lazy(&self) {
        self.set_lazy(true);
    }

    /// Records whether a restore (standalone or prepared) serves its image lazily.
    pub fn set_lazy(&self, lazy: bool) {
        self.jobs.update(&self.id, true, |r| match &mut r.spec {
            JobSpec::Restore(j) => j.lazy = lazy,
            JobSpec::PrepareRestore(j) => j.lazy = lazy,
            _ => {}
        });
    }

    pub fn set_snapshot(&self, id: &str) {
        self.jobs
            .update(&self.id, true, |r| r.snapshot_id = Some(id.to_string()));
    }

    pub fn progress(&self, done: u64, total: u64) {
        self.jobs.update(&self.id, false, |r| {
            r.bytes_done = done;
            if total > 0 {
                r.bytes_total = total;
            }
        });
    }

    pub fn finish(&self, error: Option<String>) {
        let at = now_rfc3339();
        self.jobs.update(&self.id, true, |r| {
            r.phase = if error.is_some() {
                Phase::Failed
            } else {
                Phase::Done
            };
            r.error = error.clone();
            r.finished_at = Some(at.clone());
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn restore_spec(id: &str) -> JobSpec {
        JobSpec::Restore(RestoreJob {
            bundle: "/b".into(),
            container_id: id.into(),
            lazy: false,
        })
    }

    #[test]
    fn a_job_listed_as_finished_is_finished_on_disk() {
        let dir = tempfile::tempdir().unwrap();
        for round in 0..20 {
            let jobs = Jobs::new(dir.path().join(format!("jobs{round}"))).unwrap();
            let h = jobs.start(restore_spec("r"), "r".into(), None).unwrap();
            let record = jobs.job_dir(&h.id).join("job.json");
            let watcher = {
                let jobs = jobs.clone();
                std::thread::spawn(move || loop {
                    if jobs.list()[0].finished_at.is_some() {
                        let disk: JobRecord =
                            serde_json::from_slice(&std::fs::read(&record).unwrap()).unwrap();
                        assert!(disk.finished_at.is_some(), "listed finished before written");
                        assert_eq!(disk.phase, Phase::Done);
                        return;
                    }
                })
            };
            h.finish(None);
            watcher.join().unwrap();
        }
    }

    #[test]
    fn a_job_is_durable_until_finished() {
        let dir = tempfile::tempdir().unwrap();
        let jobs = Jobs::new(dir.path().join("jobs")).unwrap();
        let h = jobs.start(restore_spec("c1"), "c1".into(), None).unwrap();
        h.phase(Phase::Uploading);
        // A second registry over the same dir (a restarted daemon) sees it unfinished.
        let again = Jobs::new(dir.path().join("jobs")).unwrap();
        let pending = again.unfinished_on_disk();
        assert_eq!(pending.len(), 1);
        assert_eq!(pending[0].phase, Phase::Uploading);
        h.finish(None);
        assert!(again.unfinished_on_disk().is_empty());
        assert_eq!(jobs.in_flight(), 0);
        assert_eq!(jobs.list()[0].phase, Phase::Done);
    }

    /// Records written by the release before typed specs (`tests/fixtures/jobs/`), each
    /// caught on disk while its job ran or once it was done.
    const EARLIER: [(&str, &str); 5] = [
        (
            "checkpoint-checkpointing",
            include_str!("../tests/fixtures/jobs/checkpoint-checkpointing.json"),
        ),
        (
            "checkpoint-resuming",
            include_str!("../tests/fixtures/jobs/checkpoint-resuming.json"),
        ),
        (
            "checkpoint-done",
            include_str!("../tests/fixtures/jobs/checkpoint-done.json"),
        ),
        (
            "restore-restoring",
            include_str!("../tests/fixtures/jobs/restore-restoring.json"),
        ),
        (
            "prepare-restore-done",
            include_str!("../tests/fixtures/jobs/prepare-restore-done.json"),
        ),
    ];

    #[test]
    fn records_of_the_earlier_release_are_read_typed_and_written_back_unchanged() {
        for (name, text) in EARLIER {
            let rec: JobRecord =
                serde_json::from_str(text).unwrap_or_else(|e| panic!("{name}: {e}"));
            // Written back, the record is what the earlier release wrote (it reads it again),
            // plus the explicit stage of a checkpoint (which that release ignores).
            let original: serde_json::Value = serde_json::from_str(text).unwrap();
            let mut written = serde_json::to_value(&rec).unwrap();
            let stage = written["details"]
                .as_object_mut()
                .and_then(|d| d.remove("stage"));
            assert_eq!(written, original, "{name}");
            assert_eq!(stage.is_some(), rec.kind() == JobKind::Checkpoint, "{name}");
            match (&rec.spec, name) {
                (JobSpec::Checkpoint(c), _) => {
                    assert_eq!(c.sandbox.container_id, "app1", "{name}");
                    assert_eq!(c.group, "app=web");
                    assert_eq!(c.labels.get("app").map(String::as_str), Some("web"));
                    assert_eq!(c.keep, 3);
                    assert_eq!(
                        c.after,
                        AfterCheckpoint::RestoreInPlace,
                        "runsc 20221219 resumes in place"
                    );
                    assert_eq!(c.parent, None);
                    let want = match name {
                        "checkpoint-checkpointing" => CheckpointStage::Resolved,
                        "checkpoint-resuming" => CheckpointStage::Checkpointed,
                        _ => CheckpointStage::Resumed,
                    };
                    assert_eq!(c.stage, want, "{name}");
                    assert_eq!(stage, Some(serde_json::to_value(want).unwrap()), "{name}");
                    assert_eq!(rec.finished_at.is_some(), name == "checkpoint-done");
                }
                (JobSpec::Restore(r), "restore-restoring") => {
                    assert_eq!(r.container_id, "app2");
                    assert!(r.bundle.is_absolute());
                    assert_eq!(rec.phase, Phase::Restoring);
                    assert!(rec.finished_at.is_none());
                }
                (JobSpec::PrepareRestore(_), "prepare-restore-done") => {
                    assert_eq!(rec.target, "app3");
                    assert_eq!(rec.phase, Phase::Done);
                }
                (spec, _) => panic!("{name}: read as {spec:?}"),
            }
        }
    }

    #[test]
    fn an_unfinished_record_with_unreadable_details_is_failed_on_disk() {
        let dir = tempfile::tempdir().unwrap();
        let jobs = Jobs::new(dir.path().join("jobs")).unwrap();
        let mut rec: serde_json::Value = serde_json::from_str(EARLIER[1].1).unwrap();
        rec["details"] = serde_json::json!({ "group": "g" });
        let id = rec["id"].as_str().unwrap().to_string();
        std::fs::create_dir_all(jobs.job_dir(&id)).unwrap();
        std::fs::write(
            jobs.job_dir(&id).join("job.json"),
            serde_json::to_vec(&rec).unwrap(),
        )
        .unwrap();
        assert!(jobs.unfinished_on_disk().is_empty());
        let disk: serde_json::Value =
            serde_json::from_slice(&std::fs::read(jobs.job_dir(&id).join("job.json")).unwrap())
                .unwrap();
        assert_eq!(disk["phase"], "failed");
        assert!(disk["finished_at"].is_string());
        assert!(
            disk["error"].as_str().unwrap().contains("sandbox"),
            "{disk}"
        );
    }

    #[test]
    fn stages_are_recorded_durably() {
        let dir = tempfile::tempdir().unwrap();
        let jobs = Jobs::new(dir.path().join("jobs")).unwrap();
        let JobSpec::Checkpoint(mut cp) = serde_json::from_str::<JobRecord>(EARLIER[2].1)
            .unwrap()
            .spec
        else {
            panic!("a checkpoint fixture");
        };
        cp.stage = CheckpointStage::Resolved;
        let h = jobs
            .start(JobSpec::Checkpoint(cp), "c".into(), None)
            .unwrap();
        h.stage_done(CheckpointStage::Checkpointed);
        let again = Jobs::new(dir.path().join("jobs")).unwrap();
        let JobSpec::Checkpoint(cp) = &again.unfinished_on_disk()[0].spec else {
            panic!("a checkpoint");
        };
        assert_eq!(cp.stage, CheckpointStage::Checkpointed);
        h.stage_done(CheckpointStage::Committed);
        let disk: serde_json::Value =
            serde_json::from_slice(&std::fs::read(jobs.job_dir(&h.id).join("job.json")).unwrap())
                .unwrap();
        // What the release before explicit stages reads: the image is written and the
        // sandbox resumed in place (that release then finds the snapshot in the store).
        assert_eq!(disk["details"]["stage"], "committed");
        assert_eq!(disk["details"]["checkpointed"], true);
        assert_eq!(disk["details"]["resumed"], true);
    }

    #[test]
    fn the_post_checkpoint_action_reads_from_the_earlier_flags() {
        let rec: serde_json::Value = serde_json::from_str(EARLIER[0].1).unwrap();
        for (resume, leave_running, after) in [
            (true, true, AfterCheckpoint::LeaveRunning),
            (true, false, AfterCheckpoint::RestoreInPlace),
            (false, false, AfterCheckpoint::Stop),
        ] {
            let mut rec = rec.clone();
            rec["details"]["resume"] = resume.into();
            rec["details"]["leave_running"] = leave_running.into();
            let read: JobRecord = serde_json::from_value(rec.clone()).unwrap();
            let JobSpec::Checkpoint(cp) = &read.spec else {
                panic!("a checkpoint");
            };
            assert_eq!(cp.after, after);
            let back = serde_json::to_value(&read).unwrap();
            assert_eq!(back["details"]["resume"], resume);
            assert_eq!(back["details"]["leave_running"], leave_running);
        }
    }

    #[test]
    fn job_ids_sort_by_start() {
        let a = new_job_id();
        std::thread::sleep(std::time::Duration::from_millis(2));
        let b = new_job_id();
        assert!(a < b, "{a} !< {b}");
    }
}
