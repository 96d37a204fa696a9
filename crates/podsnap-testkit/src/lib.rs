//! Test support shared by podsnap's crates: gating of privileged tests and helpers that start
//! the real components (runsc sandboxes, containerd, a moto S3 server, Azurite) on this machine, and a
//! parsed view of podsnapd's metrics exposition.
//!
//! Gating rule: a test that needs root, runsc, containerd or moto calls [`require`]. When
//! `PODSNAP_REQUIRE_PRIVILEGED=1` (set by `make test`, and so by CI) a missing prerequisite is
//! a test failure; otherwise the test prints why it is skipped and returns early, so a plain
//! `cargo test` passes on a developer machine without those components.

pub mod azurite;
pub mod containerd;
pub mod cri;
pub mod daemon;
pub mod metrics;
pub mod moto;
pub mod pki;
pub mod runsc;

use std::path::Path;

/// What a test needs from the machine.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Need {
    Root,
    Runsc,
    Containerd,
    Moto,
    /// Azurite's blob service (`azurite-blob`, npm package `azurite`) and python3.
    Azurite,
}

fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

fn have_binary(name: &str) -> bool {
    std::env::var_os("PATH")
        .map(|paths| std::env::split_paths(&paths).any(|p| p.join(name).is_file()))
        .unwrap_or(false)
}

fn missing(need: Need) -> Option<String> {
    match need {
        Need::Root => (!is_root()).then(|| "not running as root".to_string()),
        Need::Runsc => (!have_binary("runsc")).then(|| "runsc not on PATH".to_string()),
        Need::Containerd => (!have_binary("containerd") || !have_binary("ctr"))
            .then(|| "containerd/ctr not on PATH".to_string()),
        Need::Moto => {
            let ok = std::process::Command::new("python3")
                .args(["-c", "import moto.server"])
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .status()
                .map(|s| s.success())
                .unwrap_or(false);
            (!ok).then(|| "python3 module moto[server] not installed".to_string())
        }
        Need::Azurite => (!have_binary("azurite-blob") || !have_binary("python3"))
            .then(|| "azurite-blob (npm install -g azurite) or python3 not on PATH".to_string()),
    }
}

/// True when privileged/real-component tests must run (missing prerequisites fail).
pub fn privileged_required() -> bool {
    std::env::var("PODSNAP_REQUIRE_PRIVILEGED").as_deref() == Ok("1")
}

/// Returns true when the test may proceed. Returns false (after printing the reason) when a
/// prerequisite is missing and privileged tests are not required; panics when they are.
pub fn require(test: &str, needs: &[Need]) -> bool {
    let reasons: Vec<String> = needs.iter().filter_map(|n| missing(*n)).collect();
    if reasons.is_empty() {
        return true;
    }
    let msg = format!("{test}: prerequisites missing: {}", reasons.join(", "));
    if privileged_required() {
        panic!("{msg} (PODSNAP_REQUIRE_PRIVILEGED=1)");
    }
    eprintln!("skipping {msg}");
    false
}

/// [`require`] for a prerequisite that [`Need`] does not name (a runsc release, a capability
/// of the installed runsc): `missing` says why the test cannot run, `None` when it can.
/// Returns true when the test may proceed; skips (false) or, with
/// `PODSNAP_REQUIRE_PRIVILEGED=1`, panics otherwise.
pub fn require_that(test: &str, missing: Option<String>) -> bool {
    let Some(reason) = missing else {
        return true;
    };
    let msg = format!("{test}: prerequisite missing: {reason}");
    if privileged_required() {
        panic!("{msg} (PODSNAP_REQUIRE_PRIVILEGED=1)");
    }
    eprintln!("skipping {msg}");
    false
}

/// Path of a workspace-relative file, for fixtures shared between crates.
pub fn workspace_path(rel: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .join(rel)
}
