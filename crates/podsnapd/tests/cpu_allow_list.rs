//! CPU features the 2026 way, with the real runsc 2026 build under podsnapd: a sandbox started
//! with gVisor's allow-list annotation (`dev.gvisor.internal.cpufeatures`) sees only the listed
//! features, its snapshot records exactly that narrowed set (not the host's), the compatibility
//! check passes on this node, and the snapshot restores with its counter going on.

mod common;

use std::time::Duration;

use podsnap_proto::v1 as pb;
use podsnap_testkit::daemon::PodsnapdCmd;
use podsnap_testkit::runsc::{
    first_count, last_count, oci_spec, unique_id, wait_for_count, Bundle, CounterSandbox, Release,
    RunscCmd, COUNTER_SCRIPT,
};
use podsnap_testkit::{require, Need};

/// Host features the allow-list leaves out (those of them this host has).
const HIDDEN: &[&str] = &["avx2", "avx512f", "sha_ni", "aes", "avx"];

/// The host's features split by the allow-list: (hidden: those of [`HIDDEN`] this host has,
/// allowed: every other host feature).
fn split_host_features() -> (Vec<&'static str>, Vec<String>) {
    let host = podsnap_cpu::host().unwrap();
    let hidden: Vec<&str> = HIDDEN
        .iter()
        .copied()
        .filter(|f| host.has_feature(f))
        .collect();
    assert!(
        !hidden.is_empty(),
        "this host has none of {HIDDEN:?}: the test cannot show a narrowed set"
    );
    let allowed: Vec<String> = host
        .features
        .iter()
        .filter(|f| !hidden.contains(&f.as_str()))
        .cloned()
        .collect();
    (hidden, allowed)
}

/// A counter bundle whose spec carries the allow-list annotation; the sandbox prints the flags
/// it sees once, then counts.
fn allow_listed_counter(allowed: &[String]) -> Bundle {
    let script = format!("cat /proc/cpuinfo; {COUNTER_SCRIPT}");
    let bundle = Bundle::with_args(&["/bin/sh", "-c", &script]).unwrap();
    let mut spec = oci_spec(&["/bin/sh", "-c", &script]);
    spec["annotations"] =
        serde_json::json!({ podsnap_cpu::CPUFEATURES_ANNOTATION: allowed.join(",") });
    Bundle::write_spec(bundle.path(), &spec).unwrap();
    bundle
}

/// The sandbox's own /proc/cpuinfo (in its log) lacks every hidden feature.
fn assert_sandbox_sees_narrowed_set(log: &std::path::Path, hidden: &[&str]) {
    let seen = std::fs::read_to_string(log).unwrap();
    let flags = seen
        .lines()
        .find(|l| l.starts_with("flags"))
        .unwrap_or_else(|| panic!("no flags line in the sandbox's /proc/cpuinfo: {seen}"));
    let flags: Vec<&str> = flags.split_whitespace().collect();
    for f in hidden {
        assert!(!flags.contains(f), "the sandbox still sees {f}: {flags:?}");
    }
    assert!(flags.contains(&"fpu"), "{flags:?}");
}

/// The snapshot records exactly the allow-listed set, none of the hidden features.
fn assert_records_allowed_set(snap: &pb::Snapshot, allowed: &[String], hidden: &[&str]) {
    let recorded = snap.source.clone().unwrap().cpu.unwrap().features;
    let mut want = allowed.to_vec();
    want.sort();
    let mut got = recorded.clone();
    got.sort();
    assert_eq!(got, want, "the snapshot records the allow-listed set");
    for f in hidden {
        assert!(!recorded.iter().any(|r| r == f), "{f} recorded");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sandbox_under_the_allow_list_records_and_restores_with_the_narrowed_set() {
    if !require(
        "a_sandbox_under_the_allow_list_records_and_restores_with_the_narrowed_set",
        &[Need::Root, Need::Runsc],
    ) {
        return;
    }
    let Some(runsc) = Release::R2026.required() else {
        return;
    };
    let (hidden, allowed) = split_host_features();

    let dir = tempfile::tempdir().unwrap();
    let d = PodsnapdCmd::new(env!("CARGO_BIN_EXE_podsnapd"), dir.path(), "node-cpu")
        .arg(format!("--runsc={}", runsc.display()))
        .spawn();
    let id = unique_id("cpu-allow");
    let log = dir.path().join("counter.log");
    let bundle = allow_listed_counter(&allowed);
    let sb = CounterSandbox::start_on(Release::R2026, &d.root, &id, &log, &[], bundle)
        .expect("counter starts");
    wait_for_count(&log, 2, Duration::from_secs(30)).unwrap();
    assert_sandbox_sees_narrowed_set(&log, &hidden);

    let mut c = podsnap_proto::client::podsnapd(&d.sock).await.unwrap();
    let snap = common::checkpoint(
        &mut c,
        common::harness::checkpoint_req(&id, &[], &[], 0, true),
    )
    .await;
    let before = last_count(&log).unwrap();
    assert_records_allowed_set(&snap, &allowed, &hidden);

    let compat = c
        .check_compatibility(pb::CheckCompatibilityRequest {
            snapshot_id: snap.id.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(compat.compatible, "{compat:?}");

    RunscCmd::of(Release::R2026, &d.root).force_delete(&id);
    let other = unique_id("cpu-restored");
    let rlog = dir.path().join("restored.log");
    common::restore(&mut c, &snap.id, sb.bundle.path(), &other, Some(&rlog))
        .await
        .expect("restore succeeds");
    wait_for_count(&rlog, before + 1, Duration::from_secs(30)).unwrap();
    let first = first_count(&rlog).unwrap();
    RunscCmd::of(Release::R2026, &d.root).force_delete(&other);
    assert!(
        first >= before && first < before + 5,
        "checkpointed at {before}, restored from {first}"
    );
}
