//! A fixed pool of CPU worker threads (one per core) for hashing, compression and
//! verification.
//!
//! Why not `spawn_blocking`: tokio grows its blocking pool on demand, and every new thread
//! gets its own malloc arena that keeps the multi-MiB block buffers it freed. A fixed, small
//! set of long-lived threads keeps peak RSS bounded and predictable.

use std::sync::mpsc;
use std::sync::{Arc, Mutex, OnceLock};

type Job = Box<dyn FnOnce() + Send + 'static>;

/// A set of threads taking jobs from one queue.
struct Pool(Mutex<mpsc::Sender<Job>>);

impl Pool {
    fn start(name: &str, threads: usize, on_start: fn()) -> Pool {
        let (tx, rx) = mpsc::channel::<Job>();
        let rx = Arc::new(Mutex::new(rx));
        for i in 0..threads {
            let rx = rx.clone();
            std::thread::Builder::new()
                .name(format!("{name}-{i}"))
                .spawn(move || {
                    on_start();
                    loop {
                        let job = {
                            let guard = rx.lock().unwrap_or_else(|e| e.into_inner());
                            guard.recv()
                        };
                        match job {
                            Ok(job) => job(),
                            Err(_) => return,
                        }
                    }
                })
                .expect("spawn podsnap worker thread");
        }
        Pool(Mutex::new(tx))
    }

    /// Runs `f` on one of the pool's threads; resolves to its result. A panic in `f`
    /// resolves to an error.
    async fn run<T, F>(&self, f: F) -> Result<T, crate::StoreError>
    where
        T: Send + 'static,
        F: FnOnce() -> T + Send + 'static,
    {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let job: Job = Box::new(move || {
            let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
            let _ = tx.send(r);
        });
        self.0
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
}

/// Number of CPU workers: the available parallelism.
pub(crate) fn workers() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(2)
}

/// Runs `f` on the pool of one thread per core; resolves to its result. A panic in `f`
/// resolves to an error.
pub(crate) async fn run<T, F>(f: F) -> Result<T, crate::StoreError>
where
    T: Send + 'static,
    F: FnOnce() -> T + Send + 'static,
{
    static POOL: OnceLock<Pool> = OnceLock::new();
    POOL.get_or_init(|| Pool::start("podsnap-cpu", workers(), || {}))
        .run(f)
        .await
}

/// Runs `f` on the one thread that only uses CPU time no other thread of the host wants
/// (`SCHED_IDLE`); resolves to its result.
///
/// For work done while another process must finish first: a push that follows runsc while it
/// writes a checkpoint, with the sandbox paused until runsc is done. Queue little here: on a
/// host whose CPUs are all busy, this thread gets almost no time.
pub(crate) async fn run_idle<T, F>(f: F) -> Result<T, crate::StoreError>
where
    T: Send + 'static,
    F: FnOnce() -> T + Send + 'static,
{
    static POOL: OnceLock<Pool> = OnceLock::new();
    POOL.get_or_init(|| Pool::start("podsnap-idle", 1, idle_on_start))
        .run(f)
        .await
}

/// Like [`run_idle`], on a pool of one `SCHED_IDLE` thread per core: for work that may use
/// all the CPU time nothing else wants (a checkpoint that stops its sandbox, whose runsc
/// still writes: idle cores are free, and runsc keeps every core it asks for).
pub(crate) async fn run_idle_wide<T, F>(f: F) -> Result<T, crate::StoreError>
where
    T: Send + 'static,
    F: FnOnce() -> T + Send + 'static,
{
    static POOL: OnceLock<Pool> = OnceLock::new();
    POOL.get_or_init(|| Pool::start("podsnap-idlew", workers(), idle_on_start))
        .run(f)
        .await
}

fn idle_on_start() {
    if let Err(e) = set_idle_priority() {
        tracing::warn!(
            "cannot give the follow worker idle CPU priority ({e}); it runs at normal priority"
        );
    }
}

/// Puts the calling thread in the `SCHED_IDLE` class (Linux; no privilege needed to lower
/// one's own priority). Elsewhere: the lowest nice value.
#[cfg(target_os = "linux")]
fn set_idle_priority() -> std::io::Result<()> {
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: pid 0 is the calling thread; `param` is a valid sched_param for SCHED_IDLE,
    // whose only allowed priority is 0.
    #[allow(unsafe_code)]
    let r = unsafe { libc::sched_setscheduler(0, libc::SCHED_IDLE, &param) };
    if r == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

#[cfg(not(target_os = "linux"))]
fn set_idle_priority() -> std::io::Result<()> {
    Err(std::io::Error::other("not supported on this OS"))
}

/// The calling thread's scheduling policy (for tests).
#[cfg(all(test, target_os = "linux"))]
fn current_policy() -> i32 {
    // SAFETY: pid 0 is the calling thread; no memory is passed.
    #[allow(unsafe_code)]
    unsafe {
        libc::sched_getscheduler(0)
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
    #[cfg(target_os = "linux")]
    #[tokio::test]
    async fn idle_work_runs_in_the_idle_class_and_other_work_does_not() {
        let idle = super::run_idle(super::current_policy).await.unwrap();
        assert_eq!(idle, libc::SCHED_IDLE);
        let wide = super::run_idle_wide(super::current_policy).await.unwrap();
        assert_eq!(wide, libc::SCHED_IDLE);
        let normal = super::run(super::current_policy).await.unwrap();
        assert_eq!(normal, libc::SCHED_OTHER);
    }

    #[tokio::test]
    async fn a_panicking_idle_job_is_an_error_and_the_thread_lives_on() {
        let r = super::run_idle(|| panic!("boom")).await;
        assert!(matches!(r, Err(crate::StoreError::Worker(_))), "{r:?}");
        assert_eq!(super::run_idle(|| 7).await.unwrap(), 7);
    }

    #[test]
    fn the_arena_cap_is_applied_on_glibc_unless_the_environment_sets_one() {
        let expected = cfg!(all(target_os = "linux", target_env = "gnu"))
            && std::env::var_os("MALLOC_ARENA_MAX").is_none();
        assert_eq!(super::limit_malloc_arenas(2), expected);
    }
}
