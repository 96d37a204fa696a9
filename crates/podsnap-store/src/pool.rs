//! A fixed pool of CPU worker threads (one per core) for hashing, compression and
//! verification.
//!
//! Why not `spawn_blocking`: tokio grows its blocking pool on demand, and every new thread
//! gets its own malloc arena that keeps the multi-MiB block buffers it freed. A fixed, small
//! set of long-lived threads keeps peak RSS bounded and predictable.

use std::sync::mpsc;
use std::sync::{Arc, Mutex, OnceLock};

type Job = Box<dyn FnOnce() + Send + 'static>;

fn sender() -> &'static Mutex<mpsc::Sender<Job>> {
    static POOL: OnceLock<Mutex<mpsc::Sender<Job>>> = OnceLock::new();
    POOL.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<Job>();
        let rx = Arc::new(Mutex::new(rx));
        for i in 0..workers() {
            let rx = rx.clone();
            std::thread::Builder::new()
                .name(format!("podsnap-cpu-{i}"))
                .spawn(move || loop {
                    let job = {
                        let guard = rx.lock().unwrap_or_else(|e| e.into_inner());
                        guard.recv()
                    };
                    match job {
                        Ok(job) => job(),
                        Err(_) => return,
                    }
                })
                .expect("spawn podsnap worker thread");
        }
        Mutex::new(tx)
    })
}

/// Number of CPU workers: the available parallelism.
pub(crate) fn workers() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(2)
}

/// Runs `f` on the pool; resolves to its result. A panic in `f` resolves to an error.
pub(crate) async fn run<T, F>(f: F) -> Result<T, crate::StoreError>
where
    T: Send + 'static,
    F: FnOnce() -> T + Send + 'static,
{
    let (tx, rx) = tokio::sync::oneshot::channel();
    let job: Job = Box::new(move || {
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
        let _ = tx.send(r);
    });
    sender()
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .send(job)
        .map_err(|_| crate::StoreError::Worker("worker pool is gone".into()))?;
    match rx.await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(_)) => Err(crate::StoreError::Worker("worker panicked".into())),
        Err(_) => Err(crate::StoreError::Worker("worker dropped the job".into())),
    }
}
