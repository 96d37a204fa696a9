//! gVisor's x86-64 CPU feature names and where each one lives in CPUID.
//!
//! gVisor (`pkg/cpuid`, `features_amd64.go`) numbers features in 32-bit *blocks*, one block per
//! CPUID register it reads:
//!
//! | block | source                           |
//! |-------|----------------------------------|
//! | 0     | leaf 1, ECX                      |
//! | 1     | leaf 1, EDX                      |
//! | 2     | leaf 7 subleaf 0, EBX            |
//! | 3     | leaf 7 subleaf 0, ECX            |
//! | 4     | leaf 0xD subleaf 1, EAX (XSAVE)  |
//! | 5     | leaf 0x8000_0001, ECX            |
//! | 6     | leaf 0x8000_0001, EDX            |
//! | 7     | leaf 7 subleaf 0, EDX            |
//!
//! Only bits that gVisor names are features; a reserved or unnamed bit is never reported (for
//! example `avx512ifma`, leaf 7 EBX bit 21, has no name in gVisor and is therefore not part of a
//! feature set). The names are gVisor's display names, which follow Linux's
//! `/proc/cpuinfo` flags, including gVisor's own spellings (`clfushopt`, `rdt_a`, `pni`).
//!
//! [`FEATURES`] lists them in gVisor's canonical order: blocks 1, 6, 0, 5, 2, 4, 3, 7 (Linux's
//! block order) and bits ascending within a block. That is the order in which
//! `runsc cpu-features` prints them.

use std::collections::HashMap;
use std::sync::OnceLock;

/// A CPUID register that gVisor reads feature bits from (gVisor's "block").
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Block {
    /// Block 0: leaf 1, ECX.
    Leaf1Ecx,
    /// Block 1: leaf 1, EDX.
    Leaf1Edx,
    /// Block 2: leaf 7 subleaf 0, EBX.
    Leaf7Ebx,
    /// Block 3: leaf 7 subleaf 0, ECX.
    Leaf7Ecx,
    /// Block 4: leaf 0xD subleaf 1, EAX. Only read when leaf 1 ECX reports XSAVE.
    XsaveSub1Eax,
    /// Block 5: leaf 0x8000_0001, ECX.
    Ext1Ecx,
    /// Block 6: leaf 0x8000_0001, EDX, without the bits that AMD duplicates from leaf 1 EDX
    /// (see [`AMD_DUPLICATE_MASK`]).
    Ext1Edx,
    /// Block 7: leaf 7 subleaf 0, EDX.
    Leaf7Edx,
}

impl Block {
    /// gVisor's block number.
    pub const fn number(self) -> usize {
        match self {
            Block::Leaf1Ecx => 0,
            Block::Leaf1Edx => 1,
            Block::Leaf7Ebx => 2,
            Block::Leaf7Ecx => 3,
            Block::XsaveSub1Eax => 4,
            Block::Ext1Ecx => 5,
            Block::Ext1Edx => 6,
            Block::Leaf7Edx => 7,
        }
    }
}

/// Bits of leaf 0x8000_0001 EDX that AMD CPUs copy from leaf 1 EDX (EDX\[24:23\], EDX\[17:12\] and
/// EDX\[9:0\]); they are reserved on Intel. gVisor ignores them, so a feature such as `fpu` is
/// reported once, from leaf 1. Same value as gVisor's `block6DuplicateMask`.
pub const AMD_DUPLICATE_MASK: u32 = 0x0183_f3ff;

/// One named CPU feature.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Feature {
    /// gVisor's name for it.
    pub name: &'static str,
    /// The register it is read from.
    pub block: Block,
    /// Its bit in that register.
    pub bit: u8,
}

const fn f(name: &'static str, block: Block, bit: u8) -> Feature {
    Feature { name, block, bit }
}

/// Every feature gVisor names on x86-64, in gVisor's canonical order.
pub const FEATURES: &[Feature] = &[
    // Block 1.
    f("fpu", Block::Leaf1Edx, 0),
    f("vme", Block::Leaf1Edx, 1),
    f("de", Block::Leaf1Edx, 2),
    f("pse", Block::Leaf1Edx, 3),
    f("tsc", Block::Leaf1Edx, 4),
    f("msr", Block::Leaf1Edx, 5),
    f("pae", Block::Leaf1Edx, 6),
    f("mce", Block::Leaf1Edx, 7),
    f("cx8", Block::Leaf1Edx, 8),
    f("apic", Block::Leaf1Edx, 9),
    f("sep", Block::Leaf1Edx, 11),
    f("mtrr", Block::Leaf1Edx, 12),
    f("pge", Block::Leaf1Edx, 13),
    f("mca", Block::Leaf1Edx, 14),
    f("cmov", Block::Leaf1Edx, 15),
    f("pat", Block::Leaf1Edx, 16),
    f("pse36", Block::Leaf1Edx, 17),
    f("pn", Block::Leaf1Edx, 18),
    f("clflush", Block::Leaf1Edx, 19),
    f("dts", Block::Leaf1Edx, 21),
    f("acpi", Block::Leaf1Edx, 22),
    f("mmx", Block::Leaf1Edx, 23),
    f("fxsr", Block::Leaf1Edx, 24),
    f("sse", Block::Leaf1Edx, 25),
    f("sse2", Block::Leaf1Edx, 26),
    f("ss", Block::Leaf1Edx, 27),
    f("ht", Block::Leaf1Edx, 28),
    f("tm", Block::Leaf1Edx, 29),
    f("ia64", Block::Leaf1Edx, 30),
    f("pbe", Block::Leaf1Edx, 31),
    // Block 6.
    f("syscall", Block::Ext1Edx, 11),
    f("nx", Block::Ext1Edx, 20),
    f("mmxext", Block::Ext1Edx, 22),
    f("fxsr_opt", Block::Ext1Edx, 25),
    f("pdpe1gb", Block::Ext1Edx, 26),
    f("rdtscp", Block::Ext1Edx, 27),
    f("lm", Block::Ext1Edx, 29),
    f("3dnowext", Block::Ext1Edx, 30),
    f("3dnow", Block::Ext1Edx, 31),
    // Block 0.
    f("pni", Block::Leaf1Ecx, 0),
    f("pclmulqdq", Block::Leaf1Ecx, 1),
    f("dtes64", Block::Leaf1Ecx, 2),
    f("monitor", Block::Leaf1Ecx, 3),
    f("ds_cpl", Block::Leaf1Ecx, 4),
    f("vmx", Block::Leaf1Ecx, 5),
    f("smx", Block::Leaf1Ecx, 6),
    f("est", Block::Leaf1Ecx, 7),
    f("tm2", Block::Leaf1Ecx, 8),
    f("ssse3", Block::Leaf1Ecx, 9),
    f("cid", Block::Leaf1Ecx, 10),
    f("sdbg", Block::Leaf1Ecx, 11),
    f("fma", Block::Leaf1Ecx, 12),
    f("cx16", Block::Leaf1Ecx, 13),
    f("xtpr", Block::Leaf1Ecx, 14),
    f("pdcm", Block::Leaf1Ecx, 15),
    f("pcid", Block::Leaf1Ecx, 17),
    f("dca", Block::Leaf1Ecx, 18),
    f("sse4_1", Block::Leaf1Ecx, 19),
    f("sse4_2", Block::Leaf1Ecx, 20),
    f("x2apic", Block::Leaf1Ecx, 21),
    f("movbe", Block::Leaf1Ecx, 22),
    f("popcnt", Block::Leaf1Ecx, 23),
    f("tsc_deadline_timer", Block::Leaf1Ecx, 24),
    f("aes", Block::Leaf1Ecx, 25),
    f("xsave", Block::Leaf1Ecx, 26),
    f("osxsave", Block::Leaf1Ecx, 27),
    f("avx", Block::Leaf1Ecx, 28),
    f("f16c", Block::Leaf1Ecx, 29),
    f("rdrand", Block::Leaf1Ecx, 30),
    f("hypervisor", Block::Leaf1Ecx, 31),
    // Block 5.
    f("lahf_lm", Block::Ext1Ecx, 0),
    f("cmp_legacy", Block::Ext1Ecx, 1),
    f("svm", Block::Ext1Ecx, 2),
    f("extapic", Block::Ext1Ecx, 3),
    f("cr8_legacy", Block::Ext1Ecx, 4),
    f("abm", Block::Ext1Ecx, 5),
    f("sse4a", Block::Ext1Ecx, 6),
    f("misalignsse", Block::Ext1Ecx, 7),
    f("3dnowprefetch", Block::Ext1Ecx, 8),
    f("osvw", Block::Ext1Ecx, 9),
    f("ibs", Block::Ext1Ecx, 10),
    f("xop", Block::Ext1Ecx, 11),
    f("skinit", Block::Ext1Ecx, 12),
    f("wdt", Block::Ext1Ecx, 13),
    f("lwp", Block::Ext1Ecx, 15),
    f("fma4", Block::Ext1Ecx, 16),
    f("tce", Block::Ext1Ecx, 17),
    f("tbm", Block::Ext1Ecx, 21),
    f("topoext", Block::Ext1Ecx, 22),
    f("perfctr_core", Block::Ext1Ecx, 23),
    f("perfctr_nb", Block::Ext1Ecx, 24),
    f("bpext", Block::Ext1Ecx, 26),
    f("ptsc", Block::Ext1Ecx, 27),
    f("perfctr_llc", Block::Ext1Ecx, 28),
    f("mwaitx", Block::Ext1Ecx, 29),
    f("ad_mask_extn", Block::Ext1Ecx, 30),
    // Block 2.
    f("fsgsbase", Block::Leaf7Ebx, 0),
    f("tsc_adjust", Block::Leaf7Ebx, 1),
    f("bmi1", Block::Leaf7Ebx, 3),
    f("hle", Block::Leaf7Ebx, 4),
    f("avx2", Block::Leaf7Ebx, 5),
    f("fdp_excptn_only", Block::Leaf7Ebx, 6),
    f("smep", Block::Leaf7Ebx, 7),
    f("bmi2", Block::Leaf7Ebx, 8),
    f("erms", Block::Leaf7Ebx, 9),
    f("invpcid", Block::Leaf7Ebx, 10),
    f("rtm", Block::Leaf7Ebx, 11),
    f("cqm", Block::Leaf7Ebx, 12),
    f("fpcsds", Block::Leaf7Ebx, 13),
    f("mpx", Block::Leaf7Ebx, 14),
    f("rdt_a", Block::Leaf7Ebx, 15),
    f("avx512f", Block::Leaf7Ebx, 16),
    f("avx512dq", Block::Leaf7Ebx, 17),
    f("rdseed", Block::Leaf7Ebx, 18),
    f("adx", Block::Leaf7Ebx, 19),
    f("smap", Block::Leaf7Ebx, 20),
    f("clfushopt", Block::Leaf7Ebx, 23),
    f("clwb", Block::Leaf7Ebx, 24),
    f("ipt", Block::Leaf7Ebx, 25),
    f("avx512pf", Block::Leaf7Ebx, 26),
    f("avx512er", Block::Leaf7Ebx, 27),
    f("avx512cd", Block::Leaf7Ebx, 28),
    f("sha_ni", Block::Leaf7Ebx, 29),
    f("avx512bw", Block::Leaf7Ebx, 30),
    f("avx512vl", Block::Leaf7Ebx, 31),
    // Block 4.
    f("xsaveopt", Block::XsaveSub1Eax, 0),
    f("xsavec", Block::XsaveSub1Eax, 1),
    f("xgetbv1", Block::XsaveSub1Eax, 2),
    f("xsaves", Block::XsaveSub1Eax, 3),
    // Block 3.
    f("prefetchwt1", Block::Leaf7Ecx, 0),
    f("avx512vbmi", Block::Leaf7Ecx, 1),
    f("umip", Block::Leaf7Ecx, 2),
    f("pku", Block::Leaf7Ecx, 3),
    f("ospke", Block::Leaf7Ecx, 4),
    f("waitpkg", Block::Leaf7Ecx, 5),
    f("avx512_vbmi2", Block::Leaf7Ecx, 6),
    f("cet_ss", Block::Leaf7Ecx, 7),
    f("gfni", Block::Leaf7Ecx, 8),
    f("vaes", Block::Leaf7Ecx, 9),
    f("vpclmulqdq", Block::Leaf7Ecx, 10),
    f("avx512_vnni", Block::Leaf7Ecx, 11),
    f("avx512_bitalg", Block::Leaf7Ecx, 12),
    f("tme", Block::Leaf7Ecx, 13),
    f("avx512_vpopcntdq", Block::Leaf7Ecx, 14),
    f("la57", Block::Leaf7Ecx, 16),
    f("rdpid", Block::Leaf7Ecx, 22),
    f("cldemote", Block::Leaf7Ecx, 25),
    f("movdiri", Block::Leaf7Ecx, 27),
    f("movdir64b", Block::Leaf7Ecx, 28),
    // Block 7.
    f("avx512_4vnniw", Block::Leaf7Edx, 2),
    f("avx512_4fmaps", Block::Leaf7Edx, 3),
    f("fsrm", Block::Leaf7Edx, 4),
    f("avx512_vp2intersect", Block::Leaf7Edx, 8),
    f("srbds_ctrl", Block::Leaf7Edx, 9),
    f("md_clear", Block::Leaf7Edx, 10),
    f("rtm_always_abort", Block::Leaf7Edx, 11),
    f("tsx_force_abort", Block::Leaf7Edx, 13),
    f("serialize", Block::Leaf7Edx, 14),
    f("hybrid_cpu", Block::Leaf7Edx, 15),
    f("tsxldtrk", Block::Leaf7Edx, 16),
    f("pconfig", Block::Leaf7Edx, 18),
    f("arch_lbr", Block::Leaf7Edx, 19),
    f("ibt", Block::Leaf7Edx, 20),
    f("amx_bf16", Block::Leaf7Edx, 22),
    f("avx512_fp16", Block::Leaf7Edx, 23),
    f("amx_tile", Block::Leaf7Edx, 24),
    f("amx_int8", Block::Leaf7Edx, 25),
    f("spec_ctrl", Block::Leaf7Edx, 26),
    f("intel_stibp", Block::Leaf7Edx, 27),
    f("flush_l1d", Block::Leaf7Edx, 28),
    f("arch_capabilities", Block::Leaf7Edx, 29),
    f("core_capabilities", Block::Leaf7Edx, 30),
    f("spec_ctrl_ssbd", Block::Leaf7Edx, 31),
];

fn index() -> &'static HashMap<&'static str, usize> {
    static INDEX: OnceLock<HashMap<&'static str, usize>> = OnceLock::new();
    INDEX.get_or_init(|| {
        FEATURES
            .iter()
            .enumerate()
            .map(|(i, f)| (f.name, i))
            .collect()
    })
}

/// The feature called `name`, if gVisor knows it.
pub fn lookup(name: &str) -> Option<&'static Feature> {
    index().get(name).map(|&i| &FEATURES[i])
}

/// Whether gVisor knows a feature called `name`.
pub fn is_known(name: &str) -> bool {
    index().contains_key(name)
}

/// Sorts feature names into gVisor's canonical order (the order of `runsc cpu-features`);
/// names gVisor does not know go last, alphabetically. Duplicates are removed.
pub fn sort_canonical(names: &mut Vec<String>) {
    names.sort_by(|a, b| {
        let key = |n: &str| index().get(n).copied().unwrap_or(usize::MAX);
        key(a).cmp(&key(b)).then_with(|| a.cmp(b))
    });
    names.dedup();
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn table_is_in_canonical_block_order_with_unique_names_and_bits() {
        const ORDER: [usize; 8] = [1, 6, 0, 5, 2, 4, 3, 7];
        let keys: Vec<(usize, u8)> = FEATURES
            .iter()
            .map(|f| {
                let pos = ORDER.iter().position(|&b| b == f.block.number()).unwrap();
                (pos, f.bit)
            })
            .collect();
        assert!(
            keys.windows(2).all(|w| w[0] < w[1]),
            "not ordered or bits repeat"
        );
        let names: HashSet<_> = FEATURES.iter().map(|f| f.name).collect();
        assert_eq!(names.len(), FEATURES.len());
        assert!(FEATURES.iter().all(|f| f.bit < 32));
    }

    #[test]
    fn table_has_gvisor_feature_count_and_spellings() {
        assert_eq!(FEATURES.len(), 173);
        for name in [
            "fpu",
            "sse4_1",
            "avx512f",
            "hypervisor",
            "pni",
            "clfushopt",
            "sha_ni",
        ] {
            assert!(is_known(name), "{name}");
        }
        // Unnamed in gVisor, so never part of a feature set.
        assert!(!is_known("avx512ifma"));
        assert!(!is_known("clflushopt"));
    }

    #[test]
    fn no_block6_feature_sits_on_an_amd_duplicate_bit() {
        for f in FEATURES.iter().filter(|f| f.block == Block::Ext1Edx) {
            assert_eq!(AMD_DUPLICATE_MASK & (1 << f.bit), 0, "{}", f.name);
        }
    }

    #[test]
    fn sort_canonical_puts_unknown_names_last() {
        let mut v: Vec<String> = ["zzz", "avx512bw", "fpu", "avx512f", "aaa", "fpu"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        sort_canonical(&mut v);
        assert_eq!(v, ["fpu", "avx512f", "avx512bw", "aaa", "zzz"]);
    }
}
