//! Plumbing shared by podsnapd's tests (each test binary uses part of it).

#![allow(dead_code)]

pub mod harness;

use std::process::Child;
use std::time::{Duration, Instant};

/// Stops a podsnapd process the way a service manager would: SIGTERM, up to 10 s for it to
/// exit on its own, then SIGKILL. Always reaps it.
pub fn terminate(child: &mut Child) {
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
}
