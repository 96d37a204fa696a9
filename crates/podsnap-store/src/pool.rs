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

/// Caps glibc's malloc arenas at `n` for this process, unless `MALLOC_ARENA_MAX` is set (then
/// glibc already follows it). Call it first thing in `main`, before any thread starts.
///
/// Why: glibc gives threads that contend for the allocator arenas of their own (up to 8 per
/// core), and memory freed into an arena mostly stays with the process. A push or pull moves
/// multi-MiB buffers between tokio's threads, its blocking pool and the worker pool, so every
/// arena ends up holding some of them. Measured in podsnapd over three 1 GiB checkpoints:
/// peak RSS 92-143 MiB with the default, 74-87 MiB with 2 arenas, at the same speed.
/// Returns whether the cap was applied. Other C libraries: nothing to do, returns false.
pub fn limit_malloc_arenas(n: usize) -> bool {
    if std::env::var_os("MALLOC_ARENA_MAX").is_some() {
        return false;
    }
    set_arena_max(n)
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn set_arena_max(n: usize) -> bool {
    let n = libc::c_int::try_from(n.max(1)).unwrap_or(libc::c_int::MAX);
    // SAFETY: mallopt takes two integers and changes a malloc tunable; it is safe to call
    // at any time (glibc takes its own lock), and arenas already created stay valid.
    #[allow(unsafe_code)]
    let ok = unsafe { libc::mallopt(libc::M_ARENA_MAX, n) };
    ok == 1
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn set_arena_max(_n: usize) -> bool {
    false
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_arena_cap_is_applied_on_glibc_unless_the_environment_sets_one() {
        let expected = cfg!(all(target_os = "linux", target_env = "gnu"))
            && std::env::var_os("MALLOC_ARENA_MAX").is_none();
        assert_eq!(super::limit_malloc_arenas(2), expected);
    }
}
