//! Reading a [`CpuInfo`] out of CPUID, the way gVisor's `pkg/cpuid` reads its host feature set.
//!
//! The reader is raw-cpuid's [`CpuIdReader`] trait: [`host`] passes the native `cpuid`
//! instruction, tests pass a [`RegisterDump`](crate::RegisterDump) of a real CPU, and both run
//! [`capture`], the same code.

use raw_cpuid::{CpuId, CpuIdReader, CpuIdResult};

use crate::features::{Block, AMD_DUPLICATE_MASK, FEATURES};
use crate::{CpuError, CpuInfo};

const LEAF_VENDOR: u32 = 0x0;
const LEAF_FEATURES: u32 = 0x1;
const LEAF_STRUCTURED: u32 = 0x7;
const LEAF_XSAVE: u32 = 0xd;
const LEAF_EXT_MAX: u32 = 0x8000_0000;
const LEAF_EXT_FEATURES: u32 = 0x8000_0001;

/// Leaf 1 ECX bit 26: XSAVE. gVisor reads block 4 (leaf 0xD subleaf 1) only when it is set.
const XSAVE_BIT: u32 = 1 << 26;

/// Captures the CPU feature set that CPUID reports through `reader`.
///
/// - vendor: the 12-byte string of leaf 0 (EBX, EDX, ECX);
/// - family, model, stepping: from leaf 1 EAX as gVisor computes them for its `/proc/cpuinfo`:
///   `family = (extended_family << 4) & 0xff | family`,
///   `model = (extended_model << 4) & 0xff | model`, `stepping = EAX[3:0]`. Note that for
///   family 0xF parts (AMD) this is not Linux's `family + extended_family`: a Zen 2 CPU is
///   family 23 in Linux and 143 (0x8F) here and inside a gVisor sandbox;
/// - cache line size: leaf 1 EBX\[15:8\] (CLFLUSH line size) times 8, the value gVisor compares on
///   restore;
/// - features: every bit gVisor names in the eight blocks of [`crate::features`].
///
/// Leaves above the CPU's highest basic or extended leaf read as zero, so their features are
/// absent (gVisor checks the extended maximum and reads basic leaves blindly, which gives the
/// same result on any CPU that runs gVisor).
pub fn capture<R: CpuIdReader>(reader: R) -> Result<CpuInfo, CpuError> {
    let max_basic = reader.cpuid1(LEAF_VENDOR).eax;
    if max_basic < LEAF_FEATURES {
        return Err(CpuError::NoFeatureLeaf { max_basic });
    }
    let vendor = CpuId::with_cpuid_reader(reader.clone())
        .get_vendor_info()
        .map(|v| v.as_str().trim_end_matches('\0').to_string())
        .unwrap_or_default();

    let zero = CpuIdResult {
        eax: 0,
        ebx: 0,
        ecx: 0,
        edx: 0,
    };
    let basic = |leaf: u32, subleaf: u32| {
        if leaf <= max_basic {
            reader.cpuid2(leaf, subleaf)
        } else {
            zero
        }
    };
    let leaf1 = basic(LEAF_FEATURES, 0);
    let leaf7 = basic(LEAF_STRUCTURED, 0);
    let xsave1 = if leaf1.ecx & XSAVE_BIT != 0 {
        basic(LEAF_XSAVE, 1)
    } else {
        zero
    };
    let max_ext = reader.cpuid1(LEAF_EXT_MAX).eax;
    let ext1 = if max_ext >= LEAF_EXT_FEATURES {
        reader.cpuid1(LEAF_EXT_FEATURES)
    } else {
        zero
    };

    let register = |block: Block| match block {
        Block::Leaf1Ecx => leaf1.ecx,
        Block::Leaf1Edx => leaf1.edx,
        Block::Leaf7Ebx => leaf7.ebx,
        Block::Leaf7Ecx => leaf7.ecx,
        Block::XsaveSub1Eax => xsave1.eax,
        Block::Ext1Ecx => ext1.ecx,
        Block::Ext1Edx => ext1.edx & !AMD_DUPLICATE_MASK,
        Block::Leaf7Edx => leaf7.edx,
    };
    let mut features: Vec<String> = FEATURES
        .iter()
        .filter(|f| register(f.block) & (1 << f.bit) != 0)
        .map(|f| f.name.to_string())
        .collect();
    features.sort();

    let sig = leaf1.eax;
    let stepping = sig & 0xf;
    let base_model = (sig >> 4) & 0xf;
    let base_family = (sig >> 8) & 0xf;
    let ext_model = (sig >> 16) & 0xf;
    let ext_family = (sig >> 20) & 0xff;

    Ok(CpuInfo {
        vendor,
        family: ((ext_family << 4) & 0xff) | base_family,
        model: ((ext_model << 4) & 0xff) | base_model,
        stepping,
        cache_line_size: ((leaf1.ebx >> 8) & 0xff) * 8,
        features,
    })
}

/// Captures this machine's CPU feature set with the `cpuid` instruction.
#[cfg(target_arch = "x86_64")]
pub fn host() -> Result<CpuInfo, CpuError> {
    capture(raw_cpuid::CpuIdReaderNative)
}

/// Captures this machine's CPU feature set. Only x86-64 has CPUID; elsewhere this fails.
#[cfg(not(target_arch = "x86_64"))]
pub fn host() -> Result<CpuInfo, CpuError> {
    Err(CpuError::Unsupported {
        arch: std::env::consts::ARCH,
    })
}
