//! podsnap's CPU feature names against the runsc that has its own `cpu-features` command (the
//! 2026 build): the set podsnap records in a snapshot must be the set runsc itself reports on
//! this host, name for name, or compatibility checks and the allow-list annotation would speak
//! another language than gVisor.

use std::collections::BTreeSet;
use std::process::Command;

use podsnap_testkit::runsc::Release;

fn names(out: std::process::Output, what: &str) -> BTreeSet<String> {
    assert!(
        out.status.success(),
        "{what} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    let line = text.lines().next().unwrap_or_default();
    line.split(',').map(str::to_string).collect()
}

#[test]
fn cpu_features_names_the_same_set_as_runsc_2026_on_this_host() {
    let Some(runsc) = Release::R2026.required() else {
        return;
    };
    let theirs = names(
        Command::new(&runsc).arg("cpu-features").output().unwrap(),
        "runsc cpu-features",
    );
    let ours = names(
        Command::new(env!("CARGO_BIN_EXE_podsnapctl"))
            .arg("cpu-features")
            .output()
            .unwrap(),
        "podsnapctl cpu-features",
    );
    assert!(theirs.contains("fpu") && theirs.len() > 20, "{theirs:?}");
    let only_ours: Vec<_> = ours.difference(&theirs).collect();
    let only_theirs: Vec<_> = theirs.difference(&ours).collect();
    assert!(
        only_ours.is_empty() && only_theirs.is_empty(),
        "podsnap only: {only_ours:?}; runsc only: {only_theirs:?}"
    );
}
