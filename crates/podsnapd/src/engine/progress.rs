//! Progress of a job: phase changes (durable, and sent to the caller at once) and byte
//! counts from the store's pipeline (throttled to one update per 250 ms).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use podsnap_store::{Progress, ProgressEvent};

use super::{Update, Updates};
use crate::jobs::{JobHandle, Phase};
use crate::metrics::Metrics;

/// Sends progress to the job registry and the caller, throttled.
pub(super) struct JobProgress {
    job: JobHandle,
    tx: Option<Updates>,
    phase: Phase,
    done: AtomicU64,
    total: AtomicU64,
    last: Mutex<Instant>,
    metrics: Arc<Metrics>,
}

impl JobProgress {
    pub(super) fn new(
        job: &JobHandle,
        tx: Option<Updates>,
        phase: Phase,
        metrics: Arc<Metrics>,
    ) -> Self {
        JobProgress {
            job: job.clone(),
            tx,
            phase,
            done: AtomicU64::new(0),
            total: AtomicU64::new(0),
            last: Mutex::new(Instant::now()),
            metrics,
        }
    }

    fn send(&self, force: bool) {
        let now = Instant::now();
        {
            let mut last = self.last.lock().expect("progress");
            if !force && now.duration_since(*last).as_millis() < 250 {
                return;
            }
            *last = now;
        }
        let (done, total) = (
            self.done.load(Ordering::Relaxed),
            self.total.load(Ordering::Relaxed),
        );
        self.job.progress(done, total);
        if let Some(tx) = &self.tx {
            let _ = tx.send(Update {
                job_id: self.job.id.clone(),
                phase: self.phase,
                done,
                total,
                message: String::new(),
            });
        }
    }
}

impl Progress for JobProgress {
    fn event(&self, ev: ProgressEvent) {
        match ev {
            ProgressEvent::Started { total_bytes } => {
                self.total.store(total_bytes, Ordering::Relaxed);
                self.send(true);
            }
            ProgressEvent::BytesRead(n) => {
                self.metrics.bytes("read", n);
                self.done.fetch_add(n, Ordering::Relaxed);
                self.send(false);
            }
            ProgressEvent::BytesWritten(n) => {
                self.done.fetch_add(n, Ordering::Relaxed);
                self.send(false);
            }
            ProgressEvent::BytesUploaded(n) => self.metrics.bytes("uploaded", n),
            ProgressEvent::BytesDownloaded(n) => self.metrics.bytes("downloaded", n),
            ProgressEvent::BytesCached(n) => self.metrics.bytes("cached", n),
            ProgressEvent::Committing => self.send(true),
            _ => {}
        }
    }
}

/// Moves a job to `phase` (durably) and tells the caller.
pub(super) fn phase_update(job: &JobHandle, tx: &Option<Updates>, phase: Phase, message: &str) {
    job.phase(phase);
    if let Some(tx) = tx {
        let _ = tx.send(Update {
            job_id: job.id.clone(),
            phase,
            done: 0,
            total: 0,
            message: message.to_string(),
        });
    }
}
