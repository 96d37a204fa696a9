//! Register dumps of real CPUs (fixtures/*.json) through the same capture code as the live
//! host, and gVisor's rule applied to every pair of them.

use podsnap_cpu::{
    apply_allow_list, capture, check, intersect, CpuIdReader, CpuInfo, Register, RegisterDump,
};

const IVY_BRIDGE: &str = include_str!("../fixtures/ivy_bridge_i5_3337u.json");
const XEON_GOLD: &str = include_str!("../fixtures/xeon_gold_6252.json");
const RYZEN: &str = include_str!("../fixtures/ryzen_matisse.json");

fn dump(text: &str) -> RegisterDump {
    RegisterDump::from_json(text).unwrap()
}

fn expected(text: &str) -> CpuInfo {
    let v: serde_json::Value = serde_json::from_str(text).unwrap();
    podsnap_cpu::from_json_value(v["expected"].clone()).unwrap()
}

/// The Xeon Gold 6252 as a guest sees it: the same registers with leaf 1 ECX bit 31
/// (`hypervisor`) set, which is what KVM and every mainstream hypervisor report to guests.
fn vm_dump() -> RegisterDump {
    let mut d = dump(XEON_GOLD);
    d.set_bits(1, 0, Register::Ecx, 1 << 31);
    d
}

fn cpu(name: &str) -> CpuInfo {
    match name {
        "ivy" => capture(dump(IVY_BRIDGE)).unwrap(),
        "xeon" => capture(dump(XEON_GOLD)).unwrap(),
        "ryzen" => capture(dump(RYZEN)).unwrap(),
        "vm" => capture(vm_dump()).unwrap(),
        _ => unreachable!(),
    }
}

#[test]
fn ivy_bridge_capture_matches_recorded_expectation() {
    let got = capture(dump(IVY_BRIDGE)).unwrap();
    assert_eq!(got, expected(IVY_BRIDGE));
    assert_eq!(
        (got.vendor.as_str(), got.family, got.model, got.stepping),
        ("GenuineIntel", 6, 58, 9)
    );
    assert_eq!(got.cache_line_size, 64);
    assert_eq!(got.features.len(), 60);
    for f in [
        "fpu", "sse4_2", "avx", "xsave", "xsaveopt", "fsgsbase", "erms", "lm",
    ] {
        assert!(got.has_feature(f), "{f}");
    }
    for f in ["avx2", "fma", "movbe", "avx512f", "hypervisor", "xsavec"] {
        assert!(!got.has_feature(f), "{f}");
    }
}

#[test]
fn xeon_gold_6252_capture_matches_recorded_expectation() {
    let got = capture(dump(XEON_GOLD)).unwrap();
    assert_eq!(got, expected(XEON_GOLD));
    assert_eq!(
        (got.vendor.as_str(), got.family, got.model, got.stepping),
        ("GenuineIntel", 6, 85, 7)
    );
    assert_eq!(got.cache_line_size, 64);
    assert_eq!(got.features.len(), 102);
    for f in [
        "avx512f",
        "avx512dq",
        "avx512cd",
        "avx512bw",
        "avx512vl",
        "avx512_vnni",
        "xsaves",
        "clfushopt",
        "md_clear",
        "spec_ctrl",
    ] {
        assert!(got.has_feature(f), "{f}");
    }
    assert!(!got.has_feature("hypervisor"));
}

#[test]
fn ryzen_matisse_capture_matches_recorded_expectation() {
    let got = capture(dump(RYZEN)).unwrap();
    assert_eq!(got, expected(RYZEN));
    // gVisor's signature arithmetic: (0x8 << 4) | 0xF = 143 (Linux says family 23), model 0x71.
    assert_eq!(
        (got.vendor.as_str(), got.family, got.model, got.stepping),
        ("AuthenticAMD", 143, 113, 0)
    );
    assert_eq!(got.cache_line_size, 64);
    assert_eq!(got.features.len(), 86);
    for f in [
        "sse4a", "svm", "topoext", "mmxext", "fxsr_opt", "sha_ni", "rdpid", "avx2",
    ] {
        assert!(got.has_feature(f), "{f}");
    }
    assert!(!got.has_feature("avx512f"));
}

#[test]
fn amd_duplicate_bits_of_leaf_0x80000001_edx_are_masked() {
    // The Ryzen repeats leaf 1 EDX in leaf 0x80000001 EDX; every feature is reported once.
    let d = dump(RYZEN);
    assert_eq!(
        d.cpuid1(0x8000_0001).edx & 0x0183_f3ff,
        d.cpuid1(1).edx & 0x0183_f3ff
    );
    let got = capture(d.clone()).unwrap();
    let mut dedup = got.features.clone();
    dedup.dedup();
    assert_eq!(dedup, got.features);

    // With leaf 1 EDX cleared, the duplicates alone do not bring those features back.
    let mut only_ext = d;
    only_ext.clear_bits(1, 0, Register::Edx, u32::MAX);
    let got = capture(only_ext).unwrap();
    for f in ["fpu", "cx8", "cmov", "pat", "mmx", "fxsr"] {
        assert!(!got.has_feature(f), "{f}");
    }
    for f in [
        "syscall", "nx", "mmxext", "fxsr_opt", "pdpe1gb", "rdtscp", "lm",
    ] {
        assert!(got.has_feature(f), "{f}");
    }
}

#[test]
fn xsave_subleaf_is_ignored_without_xsave() {
    let mut d = dump(XEON_GOLD);
    d.clear_bits(1, 0, Register::Ecx, 1 << 26);
    let got = capture(d).unwrap();
    for f in ["xsave", "xsaveopt", "xsavec", "xgetbv1", "xsaves"] {
        assert!(!got.has_feature(f), "{f}");
    }
}

#[test]
fn leaves_above_the_highest_leaf_are_not_read() {
    let mut d = dump(XEON_GOLD);
    d.insert(0, 0, 1, 0x756e_6547, 0x6c65_746e, 0x4965_6e69);
    d.insert(0x8000_0000, 0, 0x8000_0000, 0, 0, 0);
    let got = capture(d).unwrap();
    assert!(got.has_feature("fpu"));
    for f in ["avx512f", "xsaveopt", "lm", "lahf_lm", "md_clear"] {
        assert!(!got.has_feature(f), "{f}");
    }
}

#[test]
fn vm_fixture_differs_from_its_source_by_hypervisor_only() {
    let vm = cpu("vm");
    let bare = cpu("xeon");
    assert!(vm.has_feature("hypervisor"));
    let mut without = vm.features.clone();
    without.retain(|f| f != "hypervisor");
    assert_eq!(without, bare.features);
}

/// (snapshot taken on, restore on, features the restore node lacks in gVisor's order; empty:
/// the restore passes). Derived from the recorded sets by the rule `saved − host = ∅` (every
/// fixture has a 64-byte cache line, so only features decide).
const VERDICTS: &[(&str, &str, &str)] = &[
    // An older Intel restores on a newer one: Cascade Lake has everything Ivy Bridge had.
    ("ivy", "xeon", ""),
    ("ivy", "vm", ""),
    (
        "ivy",
        "ryzen",
        "dts, acpi, ss, tm, pbe, dtes64, ds_cpl, vmx, est, tm2, xtpr, pdcm, pcid, x2apic, \
         tsc_deadline_timer, erms",
    ),
    (
        "xeon",
        "ivy",
        "pdpe1gb, smx, sdbg, fma, dca, movbe, aes, abm, 3dnowprefetch, tsc_adjust, bmi1, \
         avx2, fdp_excptn_only, bmi2, invpcid, cqm, fpcsds, mpx, rdt_a, avx512f, avx512dq, \
         rdseed, adx, smap, clfushopt, clwb, ipt, avx512cd, avx512bw, avx512vl, xsavec, \
         xgetbv1, xsaves, pku, ospke, avx512_vnni, md_clear, spec_ctrl, intel_stibp, \
         flush_l1d, arch_capabilities, spec_ctrl_ssbd",
    ),
    // Bare metal restores inside a VM of the same CPU: the guest has a superset.
    ("xeon", "vm", ""),
    (
        "xeon",
        "ryzen",
        "dts, acpi, ss, tm, pbe, dtes64, ds_cpl, vmx, smx, est, tm2, sdbg, xtpr, pdcm, pcid, \
         dca, x2apic, tsc_deadline_timer, tsc_adjust, fdp_excptn_only, erms, invpcid, fpcsds, \
         mpx, avx512f, avx512dq, ipt, avx512cd, avx512bw, avx512vl, pku, ospke, avx512_vnni, \
         md_clear, spec_ctrl, intel_stibp, flush_l1d, arch_capabilities, spec_ctrl_ssbd",
    ),
    (
        "ryzen",
        "ivy",
        "mmxext, fxsr_opt, pdpe1gb, fma, movbe, aes, cmp_legacy, svm, extapic, cr8_legacy, \
         abm, sse4a, misalignsse, 3dnowprefetch, osvw, ibs, skinit, wdt, tce, topoext, \
         perfctr_core, perfctr_nb, bpext, perfctr_llc, mwaitx, ad_mask_extn, bmi1, avx2, \
         bmi2, cqm, rdt_a, rdseed, adx, smap, clfushopt, clwb, sha_ni, xsavec, xgetbv1, \
         xsaves, umip, rdpid",
    ),
    (
        "ryzen",
        "xeon",
        "mmxext, fxsr_opt, cmp_legacy, svm, extapic, cr8_legacy, sse4a, misalignsse, osvw, \
         ibs, skinit, wdt, tce, topoext, perfctr_core, perfctr_nb, bpext, perfctr_llc, \
         mwaitx, ad_mask_extn, sha_ni, umip, rdpid",
    ),
    (
        "ryzen",
        "vm",
        "mmxext, fxsr_opt, cmp_legacy, svm, extapic, cr8_legacy, sse4a, misalignsse, osvw, \
         ibs, skinit, wdt, tce, topoext, perfctr_core, perfctr_nb, bpext, perfctr_llc, \
         mwaitx, ad_mask_extn, sha_ni, umip, rdpid",
    ),
    // Inside a VM to bare metal of the very same CPU: only `hypervisor` is missing.
    ("vm", "xeon", "hypervisor"),
    (
        "vm",
        "ivy",
        "pdpe1gb, smx, sdbg, fma, dca, movbe, aes, hypervisor, abm, 3dnowprefetch, \
         tsc_adjust, bmi1, avx2, fdp_excptn_only, bmi2, invpcid, cqm, fpcsds, mpx, rdt_a, \
         avx512f, avx512dq, rdseed, adx, smap, clfushopt, clwb, ipt, avx512cd, avx512bw, \
         avx512vl, xsavec, xgetbv1, xsaves, pku, ospke, avx512_vnni, md_clear, spec_ctrl, \
         intel_stibp, flush_l1d, arch_capabilities, spec_ctrl_ssbd",
    ),
    (
        "vm",
        "ryzen",
        "dts, acpi, ss, tm, pbe, dtes64, ds_cpl, vmx, smx, est, tm2, sdbg, xtpr, pdcm, pcid, \
         dca, x2apic, tsc_deadline_timer, hypervisor, tsc_adjust, fdp_excptn_only, erms, \
         invpcid, fpcsds, mpx, avx512f, avx512dq, ipt, avx512cd, avx512bw, avx512vl, pku, \
         ospke, avx512_vnni, md_clear, spec_ctrl, intel_stibp, flush_l1d, arch_capabilities, \
         spec_ctrl_ssbd",
    ),
];

#[test]
fn verdict_table_follows_the_rule_for_every_pair() {
    let names = ["ivy", "xeon", "ryzen", "vm"];
    for a in names {
        for b in names {
            if a == b {
                assert_eq!(check(&cpu(a), &cpu(b)), Ok(()), "{a} on itself");
                continue;
            }
            let (_, _, want) = VERDICTS
                .iter()
                .find(|(s, h, _)| *s == a && *h == b)
                .unwrap_or_else(|| panic!("no verdict for {a} -> {b}"));
            match check(&cpu(a), &cpu(b)) {
                Ok(()) => assert!(want.is_empty(), "{a} -> {b}: compatible, expected {want}"),
                Err(e) => {
                    assert_eq!(e.missing.join(", "), *want, "{a} -> {b}");
                    assert_eq!(e.cache_line, None);
                    assert_eq!(e.needs_hypervisor(), a == "vm", "{a} -> {b}");
                }
            }
        }
    }
}

#[test]
fn vm_snapshot_on_bare_metal_is_refused_with_explanation() {
    let e = check(&cpu("vm"), &cpu("xeon")).unwrap_err();
    assert_eq!(
        e.to_string(),
        "snapshot needs CPU features this node lacks: hypervisor \
         (a snapshot taken inside a VM cannot restore on bare metal)"
    );
}

#[test]
fn pool_allow_list_makes_snapshots_portable_across_all_fixtures() {
    let hosts = [cpu("ivy"), cpu("xeon"), cpu("ryzen"), cpu("vm")];
    let common = intersect(&hosts).unwrap();
    let value = podsnap_cpu::annotation_value(&common);
    for saved_on in &hosts {
        let recorded = apply_allow_list(saved_on, &value).unwrap();
        assert_eq!(recorded.features, common.features);
        for restore_on in &hosts {
            assert_eq!(check(&recorded, restore_on), Ok(()));
        }
    }
    assert!(common.has_feature("sse4_2") && !common.has_feature("avx2"));
}
