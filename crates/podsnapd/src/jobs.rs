//! Jobs: every checkpoint and restore is a job with a durable record under
//! `<state-dir>/jobs/<job-id>/job.json`, written (fsync + rename) before each phase acts, so a
//! restarted daemon knows what was in flight and can finish or roll back. The in-memory
//! registry keeps in-flight and recent jobs for `ListJobs` and progress.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

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
}

impl JobKind {
    pub fn as_str(self) -> &'static str {
        match self {
            JobKind::Checkpoint => "checkpoint",
            JobKind::Restore => "restore",
            JobKind::PrepareRestore => "prepare-restore",
        }
    }
}

/// The durable and reported state of one job.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct JobRecord {
    pub id: String,
    pub kind: JobKind,
    pub target: String,
    pub snapshot_id: Option<String>,
    pub phase: Phase,
    pub bytes_done: u64,
    pub bytes_total: u64,
    pub started_at: String,
    pub finished_at: Option<String>,
    pub error: Option<String>,
    /// What recovery needs: the sandbox's runsc root, bundle, post-checkpoint action, image dir.
    #[serde(default)]
    pub details: serde_json::Value,
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
        kind: JobKind,
        target: String,
        snapshot_id: Option<String>,
        details: serde_json::Value,
    ) -> std::io::Result<JobHandle> {
        let rec = JobRecord {
            id: new_job_id(),
            kind,
            target,
            snapshot_id,
            phase: Phase::Queued,
            bytes_done: 0,
            bytes_total: 0,
            started_at: now_rfc3339(),
            finished_at: None,
            error: None,
            details,
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

    /// Durable records of jobs that never finished (from an earlier run of the daemon).
    pub fn unfinished_on_disk(&self) -> Vec<JobRecord> {
        let mut out = Vec::new();
        let Ok(rd) = std::fs::read_dir(&self.dir) else {
            return out;
        };
        for e in rd.flatten() {
            let p = e.path().join("job.json");
            if let Ok(data) = std::fs::read(&p) {
                if let Ok(rec) = serde_json::from_slice::<JobRecord>(&data) {
                    if rec.finished_at.is_none() {
                        out.push(rec);
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

    pub fn set_details(&self, key: &str, value: serde_json::Value) {
        self.jobs.update(&self.id, true, |r| {
            if !r.details.is_object() {
                r.details = serde_json::json!({});
            }
            r.details[key] = value.clone();
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

    #[test]
    fn a_job_listed_as_finished_is_finished_on_disk() {
        let dir = tempfile::tempdir().unwrap();
        for round in 0..20 {
            let jobs = Jobs::new(dir.path().join(format!("jobs{round}"))).unwrap();
            let h = jobs
                .start(JobKind::Restore, "r".into(), None, serde_json::json!({}))
                .unwrap();
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
        let h = jobs
            .start(
                JobKind::Checkpoint,
                "c1".into(),
                None,
                serde_json::json!({}),
            )
            .unwrap();
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

    #[test]
    fn job_ids_sort_by_start() {
        let a = new_job_id();
        std::thread::sleep(std::time::Duration::from_millis(2));
        let b = new_job_id();
        assert!(a < b, "{a} !< {b}");
    }
}
