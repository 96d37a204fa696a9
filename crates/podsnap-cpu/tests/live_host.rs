//! The live host, through the `cpuid` instruction (x86-64 only).
#![cfg(target_arch = "x86_64")]

use podsnap_cpu::{check, host};

#[test]
fn live_host_capture_has_fpu_a_cache_line_and_is_compatible_with_itself() {
    let h = host().unwrap();
    assert!(h.has_feature("fpu"), "{h}");
    assert!(h.has_feature("sse2"), "{h}");
    assert!(h.cache_line_size > 0);
    assert!(!h.vendor.is_empty());
    assert_eq!(check(&h, &h), Ok(()));
    let mut sorted = h.features.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(sorted, h.features);
    assert!(h
        .features
        .iter()
        .all(|f| podsnap_cpu::features::is_known(f)));
}

#[test]
fn live_host_capture_is_stable_and_round_trips_through_json() {
    let a = host().unwrap();
    let b = host().unwrap();
    assert_eq!(a, b);
    assert_eq!(
        podsnap_cpu::from_json(&podsnap_cpu::to_json_pretty(&a)).unwrap(),
        a
    );
}

/// Linux's /proc/cpuinfo flags use gVisor's names for most of gVisor's features (gVisor took
/// them from Linux). The kernel can hide a CPUID bit (e.g. `noxsave`) but does not invent them,
/// so every flag Linux shows under a gVisor name must be in our capture: a check of the bit
/// table against an independent decoder. (The reverse does not hold: gVisor also reports bits
/// Linux renames or hides, such as `clfushopt`, `osxsave` and `spec_ctrl_ssbd`.)
#[test]
fn live_host_capture_covers_linux_flags_with_gvisor_names() {
    // Without the kernel's view there is nothing to compare with: skipped, or failed with
    // PODSNAP_REQUIRE_PRIVILEGED=1 (make test as root), never passed silently.
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let flags = cpuinfo.lines().find(|l| l.starts_with("flags"));
    let unavailable = flags
        .is_none()
        .then(|| "/proc/cpuinfo unreadable or without a flags line".to_string());
    if !podsnap_testkit::require_that(
        "live_host_capture_covers_linux_flags_with_gvisor_names",
        unavailable,
    ) {
        return;
    }
    let flags = flags.expect("checked above");
    let h = host().unwrap();
    let missing: Vec<&str> = flags
        .split(':')
        .nth(1)
        .unwrap_or("")
        .split_whitespace()
        .filter(|f| podsnap_cpu::features::is_known(f) && !h.has_feature(f))
        .collect();
    assert!(
        missing.is_empty(),
        "linux shows {missing:?}, capture lacks them: {h}"
    );
}
