//! CPU feature sets with gVisor's names, and gVisor's compatibility rule.
//!
//! A gVisor checkpoint contains the CPU feature set that the sandbox's applications were shown
//! (gVisor's `cpuid.FeatureSet`). Applications pick code paths from CPUID once (glibc's `memcpy`,
//! a JIT choosing AVX-512), so a restore on a CPU that lacks any of those features would crash
//! them later with `SIGILL`. gVisor therefore refuses the restore: the Sentry reads the saved
//! feature set first thing when it loads a checkpoint, and `FeatureSet.CheckHostCompatible`
//! fails unless
//!
//! 1. every feature of the saved set is present on the host (`saved − host = ∅`), and
//! 2. the cache line size (CLFLUSH line size, leaf 1 EBX\[15:8\] × 8) is equal.
//!
//! Vendor, family, model and stepping are *not* compared: an Ivy Bridge snapshot restores on a
//! Cascade Lake, and an AMD snapshot restores on Intel if Intel has every feature it recorded
//! (in practice AMD-only bits such as `sse4a` prevent that). [`check`] applies exactly this rule
//! to two [`CpuInfo`]s, so podsnap can refuse an incompatible restore *before* downloading a
//! single chunk (runsc would only find out after the whole image is on the node), with the list
//! of what is missing ([`Incompatibility`]).
//!
//! The layers:
//!
//! - [`features`]: gVisor's 173 x86-64 feature names and the CPUID register and bit of each
//!   (gVisor's eight "blocks"), in gVisor's canonical order;
//! - [`mod@capture`]: reads a [`CpuInfo`] out of any raw-cpuid [`CpuIdReader`]; [`host`] passes the
//!   `cpuid` instruction, tests pass a [`RegisterDump`] of a real CPU, through the same code;
//! - [`check`], [`apply_allow_list`], [`intersect`], [`annotation_value`]: the rule, and the
//!   helpers for running a pool of mixed nodes.
//!
//! # A pool of different CPUs
//!
//! Current gVisor accepts the OCI annotation [`CPUFEATURES_ANNOTATION`]
//! (`dev.gvisor.internal.cpufeatures=<comma list>`): the sandbox then sees only the host
//! features that are in the list (`host ∩ list`; names gVisor does not know are an error, empty
//! items are ignored), and that intersection is what its checkpoints record. Setting it to the
//! [`intersect`]ion of every node's set ([`annotation_value`]) makes snapshots restorable on any
//! node of the pool. runsc 20221219 has no such annotation (and no `cpu-features` command): on it
//! a sandbox always records the full host set.
//!
//! # Names
//!
//! Feature names are spelt as gVisor's `pkg/cpuid` (and `runsc cpu-features`) spell them, which
//! mostly follows Linux's `/proc/cpuinfo` flags (`pni` for SSE3, `sse4_1`, `sha_ni`, `rdt_a`),
//! including gVisor's own `clfushopt`. Features gVisor marks as hidden from `/proc/cpuinfo`
//! (`osxsave`, `spec_ctrl`, ...) are still features: gVisor compares and prints them.

pub mod capture;
mod dump;
pub mod features;

use std::collections::HashSet;
use std::fmt;

use serde::{Deserialize, Serialize};

pub use capture::{capture, host};
pub use dump::{Register, RegisterDump, MAX_DUMP_JSON_LEN};
pub use raw_cpuid::{CpuIdReader, CpuIdResult};

/// The OCI annotation with which current gVisor restricts a sandbox's CPU features.
pub const CPUFEATURES_ANNOTATION: &str = "dev.gvisor.internal.cpufeatures";

/// Largest JSON text [`from_json`] accepts. A feature set is a few kilobytes.
pub const MAX_JSON_LEN: usize = 64 * 1024;

/// Most feature names a [`CpuInfo`] read from JSON may carry.
pub const MAX_FEATURES: usize = 1024;

/// Longest feature name a [`CpuInfo`] read from JSON may carry.
pub const MAX_FEATURE_NAME_LEN: usize = 64;

/// Longest vendor string a [`CpuInfo`] read from JSON may carry.
pub const MAX_VENDOR_LEN: usize = 256;

/// The CPU facts that a gVisor checkpoint depends on. Serialises to the JSON shape of
/// `podsnapctl cpu-features --json`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CpuInfo {
    pub vendor: String,
    pub family: u32,
    pub model: u32,
    pub stepping: u32,
    pub cache_line_size: u32,
    /// gVisor feature names, sorted and unique.
    pub features: Vec<String>,
}

impl CpuInfo {
    /// Whether the set contains the feature `name`.
    pub fn has_feature(&self, name: &str) -> bool {
        self.features.iter().any(|f| f == name)
    }

    /// The feature names in gVisor's canonical order (the order of `runsc cpu-features`).
    pub fn features_canonical(&self) -> Vec<String> {
        let mut v = self.features.clone();
        features::sort_canonical(&mut v);
        v
    }
}

/// Errors of capturing, parsing and combining feature sets.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CpuError {
    #[error("CPUID is not available on {arch}")]
    Unsupported { arch: &'static str },
    #[error("CPUID leaf 1 is not available (highest basic leaf is {max_basic:#x})")]
    NoFeatureLeaf { max_basic: u32 },
    #[error(
        "unknown CPU feature {name:?} in the {CPUFEATURES_ANNOTATION} list \
         (expected gVisor feature names separated by commas, without spaces)"
    )]
    UnknownFeature { name: String },
    #[error("no CPU feature sets to intersect")]
    NothingToIntersect,
    #[error(
        "CPU feature sets disagree on the cache line size: set 1 has {first}, \
         set {position} has {other}; their snapshots can never restore on each other's nodes"
    )]
    CacheLineDisagreement {
        first: u32,
        /// 1-based position of the first disagreeing set.
        position: usize,
        other: u32,
    },
    #[error("{what} is {len} bytes, more than the {max} allowed")]
    TooLarge {
        what: &'static str,
        len: usize,
        max: usize,
    },
    #[error("malformed {what} JSON")]
    Json {
        what: &'static str,
        #[source]
        source: serde_json::Error,
    },
    #[error("invalid CPU feature set: {0}")]
    Invalid(String),
    #[error("invalid CPUID register dump: {0}")]
    InvalidDump(String),
}

/// Cache line sizes of a snapshot and of the node it was to restore on, when they differ.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CacheLineSizes {
    pub saved: u32,
    pub host: u32,
}

/// Why a snapshot cannot restore on this node: the features it needs that the node lacks, and
/// the cache line sizes if they differ. Displays as one line.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{}", describe(.missing, .cache_line))]
pub struct Incompatibility {
    /// Missing feature names in gVisor's canonical order (unknown names last, alphabetically).
    pub missing: Vec<String>,
    /// Set when the cache line sizes differ.
    pub cache_line: Option<CacheLineSizes>,
}

impl Incompatibility {
    /// Whether the snapshot was taken inside a VM and this node is bare metal.
    pub fn needs_hypervisor(&self) -> bool {
        self.missing.iter().any(|f| f == "hypervisor")
    }
}

fn describe(missing: &[String], cache_line: &Option<CacheLineSizes>) -> String {
    let mut parts = Vec::new();
    if !missing.is_empty() {
        let mut s = format!(
            "snapshot needs CPU features this node lacks: {}",
            missing.join(", ")
        );
        if missing.iter().any(|f| f == "hypervisor") {
            s.push_str(" (a snapshot taken inside a VM cannot restore on bare metal)");
        }
        parts.push(s);
    }
    if let Some(c) = cache_line {
        let prefix = if missing.is_empty() {
            "snapshot needs the same cache line size as this node: "
        } else {
            ""
        };
        parts.push(format!(
            "{prefix}cache line {} != {} (snapshot != this node)",
            c.saved, c.host
        ));
    }
    parts.join("; ")
}

/// gVisor's restore rule: `saved` (what a snapshot recorded) can restore on `host` iff every
/// feature of `saved` is in `host` and the cache line sizes are equal. Vendor, family, model
/// and stepping are not compared.
pub fn check(saved: &CpuInfo, host: &CpuInfo) -> Result<(), Incompatibility> {
    let have: HashSet<&str> = host.features.iter().map(String::as_str).collect();
    let mut missing: Vec<String> = saved
        .features
        .iter()
        .filter(|f| !have.contains(f.as_str()))
        .cloned()
        .collect();
    features::sort_canonical(&mut missing);
    let cache_line = (saved.cache_line_size != host.cache_line_size).then_some(CacheLineSizes {
        saved: saved.cache_line_size,
        host: host.cache_line_size,
    });
    if missing.is_empty() && cache_line.is_none() {
        Ok(())
    } else {
        Err(Incompatibility {
            missing,
            cache_line,
        })
    }
}

/// The feature set a sandbox sees (and records) when created on `host` with
/// `dev.gvisor.internal.cpufeatures=<list>`: `host ∩ list`, as current gVisor computes it.
///
/// Like gVisor: items are split on commas, empty items are ignored, a name gVisor does not
/// know is an error ([`CpuError::UnknownFeature`]; there is no trimming, so `"fpu, sse"` is
/// refused), and a listed feature the host lacks is simply not there. The XSAVE sub-features
/// (`xsaveopt`, `xsavec`, `xgetbv1`, `xsaves`) are only visible with `xsave`, so they go when
/// `xsave` is not allowed. Vendor, signature and cache line size stay the host's.
pub fn apply_allow_list(host: &CpuInfo, list: &str) -> Result<CpuInfo, CpuError> {
    let mut allowed = HashSet::new();
    for name in list.split(',').filter(|n| !n.is_empty()) {
        if !features::is_known(name) {
            return Err(CpuError::UnknownFeature {
                name: name.to_string(),
            });
        }
        allowed.insert(name);
    }
    let xsave = allowed.contains("xsave") && host.has_feature("xsave");
    let mut out = host.clone();
    out.features.retain(|f| {
        allowed.contains(f.as_str())
            && (xsave
                || features::lookup(f).map(|d| d.block) != Some(features::Block::XsaveSub1Eax))
    });
    Ok(out)
}

/// The features common to all `sets`: what to allow on a pool of nodes so that a snapshot from
/// any of them restores on every other.
///
/// All sets must have the same cache line size (no allow-list can bridge a difference). The
/// vendor, family, model and stepping of the result are the sets' common values; where the sets
/// differ, the vendor is the distinct vendors joined with `+` and the numbers are 0.
pub fn intersect(sets: &[CpuInfo]) -> Result<CpuInfo, CpuError> {
    let (first, rest) = sets.split_first().ok_or(CpuError::NothingToIntersect)?;
    if let Some((i, other)) = rest
        .iter()
        .enumerate()
        .find(|(_, s)| s.cache_line_size != first.cache_line_size)
    {
        return Err(CpuError::CacheLineDisagreement {
            first: first.cache_line_size,
            position: i + 2,
            other: other.cache_line_size,
        });
    }
    let mut features = first.features.clone();
    for s in rest {
        let have: HashSet<&str> = s.features.iter().map(String::as_str).collect();
        features.retain(|f| have.contains(f.as_str()));
    }
    features.sort();
    features.dedup();

    let mut vendors: Vec<&str> = Vec::new();
    for s in sets {
        if !vendors.contains(&s.vendor.as_str()) {
            vendors.push(&s.vendor);
        }
    }
    let common = |get: fn(&CpuInfo) -> u32| {
        let v = get(first);
        if rest.iter().all(|s| get(s) == v) {
            v
        } else {
            0
        }
    };
    Ok(CpuInfo {
        vendor: vendors.join("+"),
        family: common(|s| s.family),
        model: common(|s| s.model),
        stepping: common(|s| s.stepping),
        cache_line_size: first.cache_line_size,
        features,
    })
}

/// The value for [`CPUFEATURES_ANNOTATION`] that allows exactly `info`'s features: the names
/// comma-joined in gVisor's canonical order, which is also what `runsc cpu-features` prints.
pub fn annotation_value(info: &CpuInfo) -> String {
    info.features_canonical().join(",")
}

/// Parses a [`CpuInfo`] from JSON (at most [`MAX_JSON_LEN`] bytes), checks its bounds and
/// returns it with its features sorted and unique. Unknown feature names are kept (a newer
/// gVisor may name more); they are simply missing on any host that cannot report them.
pub fn from_json(text: &str) -> Result<CpuInfo, CpuError> {
    if text.len() > MAX_JSON_LEN {
        return Err(CpuError::TooLarge {
            what: "CPU feature set JSON",
            len: text.len(),
            max: MAX_JSON_LEN,
        });
    }
    let info = serde_json::from_str(text).map_err(|source| CpuError::Json {
        what: "CPU feature set",
        source,
    })?;
    validated(info)
}

/// Like [`from_json`], for a value already parsed (e.g. the `source.cpu` member of a snapshot
/// manifest).
pub fn from_json_value(value: serde_json::Value) -> Result<CpuInfo, CpuError> {
    let info = serde_json::from_value(value).map_err(|source| CpuError::Json {
        what: "CPU feature set",
        source,
    })?;
    validated(info)
}

/// Pretty JSON of `info`, in the shape of `podsnapctl cpu-features --json`.
pub fn to_json_pretty(info: &CpuInfo) -> String {
    // A struct of strings and integers always serialises.
    serde_json::to_string_pretty(info).expect("CpuInfo serialises to JSON")
}

fn validated(mut info: CpuInfo) -> Result<CpuInfo, CpuError> {
    if info.vendor.len() > MAX_VENDOR_LEN {
        return Err(CpuError::Invalid(format!(
            "vendor is {} bytes, more than {MAX_VENDOR_LEN}",
            info.vendor.len()
        )));
    }
    if info.features.len() > MAX_FEATURES {
        return Err(CpuError::Invalid(format!(
            "{} features, more than {MAX_FEATURES}",
            info.features.len()
        )));
    }
    if let Some(bad) = info.features.iter().find(|f| !valid_name(f)) {
        return Err(CpuError::Invalid(format!(
            "feature name {:?} is not 1 to {MAX_FEATURE_NAME_LEN} characters of a-z, 0-9 and _",
            truncate(bad, MAX_FEATURE_NAME_LEN + 8)
        )));
    }
    info.features.sort();
    info.features.dedup();
    Ok(info)
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_FEATURE_NAME_LEN
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
}

fn truncate(s: &str, max: usize) -> &str {
    match s.char_indices().nth(max) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

impl fmt::Display for CpuInfo {
    /// `vendor family/model/stepping, cache line N, K features`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} family {} model {} stepping {}, cache line {}, {} features",
            self.vendor,
            self.family,
            self.model,
            self.stepping,
            self.cache_line_size,
            self.features.len()
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(features: &[&str], cache_line_size: u32) -> CpuInfo {
        let mut features: Vec<String> = features.iter().map(|s| s.to_string()).collect();
        features.sort();
        CpuInfo {
            vendor: "GenuineIntel".into(),
            family: 6,
            model: 85,
            stepping: 7,
            cache_line_size,
            features,
        }
    }

    #[test]
    fn check_accepts_equal_sets_and_ignores_vendor_and_model() {
        let a = info(&["fpu", "sse2"], 64);
        let mut b = info(&["fpu", "sse2", "avx"], 64);
        b.vendor = "AuthenticAMD".into();
        b.family = 143;
        assert_eq!(check(&a, &a), Ok(()));
        assert_eq!(check(&a, &b), Ok(()));
    }

    #[test]
    fn incompatibility_names_missing_features_in_gvisor_order_and_cache_lines() {
        let saved = info(&["fpu", "avx512bw", "avx512f"], 64);
        let host = info(&["fpu"], 128);
        let err = check(&saved, &host).unwrap_err();
        assert_eq!(err.missing, ["avx512f", "avx512bw"]);
        assert_eq!(
            err.cache_line,
            Some(CacheLineSizes {
                saved: 64,
                host: 128
            })
        );
        assert_eq!(
            err.to_string(),
            "snapshot needs CPU features this node lacks: avx512f, avx512bw; \
             cache line 64 != 128 (snapshot != this node)"
        );
        assert!(!err.to_string().contains('\n'));
    }

    #[test]
    fn incompatibility_for_cache_line_alone_says_so() {
        let err = check(&info(&["fpu"], 64), &info(&["fpu"], 128)).unwrap_err();
        assert!(err.missing.is_empty());
        assert_eq!(
            err.to_string(),
            "snapshot needs the same cache line size as this node: cache line 64 != 128 \
             (snapshot != this node)"
        );
    }

    #[test]
    fn missing_hypervisor_explains_vm_to_bare_metal() {
        let err = check(&info(&["fpu", "hypervisor"], 64), &info(&["fpu"], 64)).unwrap_err();
        assert!(err.needs_hypervisor());
        let msg = err.to_string();
        assert!(msg.starts_with("snapshot needs CPU features this node lacks: hypervisor"));
        assert!(msg.contains("a snapshot taken inside a VM cannot restore on bare metal"));
    }

    #[test]
    fn allow_list_keeps_host_features_that_are_listed() {
        let host = info(&["fpu", "sse2", "avx", "avx2", "hypervisor"], 64);
        let out = apply_allow_list(&host, "fpu,sse2,avx2,avx512f").unwrap();
        assert_eq!(out.features, ["avx2", "fpu", "sse2"]);
        assert_eq!(out.cache_line_size, 64);
        assert_eq!(out.vendor, host.vendor);
        // The recorded set restores wherever the allowed features exist.
        assert_eq!(check(&out, &info(&["fpu", "sse2", "avx2"], 64)), Ok(()));
    }

    #[test]
    fn allow_list_ignores_empty_items_like_gvisor() {
        let host = info(&["fpu", "sse2"], 64);
        assert_eq!(apply_allow_list(&host, ",fpu,,").unwrap().features, ["fpu"]);
        assert!(apply_allow_list(&host, "").unwrap().features.is_empty());
    }

    #[test]
    fn allow_list_refuses_unknown_names_and_spaces() {
        let host = info(&["fpu", "sse2"], 64);
        let err = apply_allow_list(&host, "fpu,sse5").unwrap_err();
        assert!(matches!(&err, CpuError::UnknownFeature { name } if name == "sse5"));
        assert_eq!(
            err.to_string(),
            "unknown CPU feature \"sse5\" in the dev.gvisor.internal.cpufeatures list \
             (expected gVisor feature names separated by commas, without spaces)"
        );
        assert!(matches!(
            apply_allow_list(&host, "fpu, sse2"),
            Err(CpuError::UnknownFeature { name }) if name == " sse2"
        ));
        // Linux's spelling is not gVisor's.
        assert!(apply_allow_list(&host, "clflushopt").is_err());
        assert!(apply_allow_list(&host, "clfushopt").is_ok());
    }

    #[test]
    fn allow_list_without_xsave_hides_xsave_subfeatures() {
        let host = info(&["fpu", "xsave", "xsaveopt", "xsavec"], 64);
        let out = apply_allow_list(&host, "fpu,xsaveopt,xsavec").unwrap();
        assert_eq!(out.features, ["fpu"]);
        let out = apply_allow_list(&host, "fpu,xsave,xsaveopt").unwrap();
        assert_eq!(out.features, ["fpu", "xsave", "xsaveopt"]);
    }

    #[test]
    fn allow_list_of_annotation_value_is_identity() {
        let host = info(&["fpu", "sse2", "xsave", "xsaveopt", "hypervisor"], 64);
        assert_eq!(
            apply_allow_list(&host, &annotation_value(&host)).unwrap(),
            host
        );
    }

    #[test]
    fn intersect_keeps_common_features_and_identity() {
        let a = info(&["fpu", "sse2", "avx2"], 64);
        let b = info(&["fpu", "avx2", "avx512f"], 64);
        let out = intersect(&[a.clone(), b]).unwrap();
        assert_eq!(out.features, ["avx2", "fpu"]);
        assert_eq!(
            (out.vendor.as_str(), out.family, out.model),
            ("GenuineIntel", 6, 85)
        );
        assert_eq!(intersect(std::slice::from_ref(&a)).unwrap(), a);
    }

    #[test]
    fn intersect_of_mixed_vendors_marks_identity_as_mixed() {
        let a = info(&["fpu", "sse2"], 64);
        let mut b = info(&["fpu"], 64);
        b.vendor = "AuthenticAMD".into();
        b.family = 143;
        let out = intersect(&[a, b]).unwrap();
        assert_eq!(out.vendor, "GenuineIntel+AuthenticAMD");
        assert_eq!((out.family, out.model, out.stepping), (0, 85, 7));
        assert_eq!(out.features, ["fpu"]);
    }

    #[test]
    fn intersect_refuses_nothing_and_cache_line_disagreement() {
        assert!(matches!(intersect(&[]), Err(CpuError::NothingToIntersect)));
        let err =
            intersect(&[info(&["fpu"], 64), info(&["fpu"], 64), info(&["fpu"], 128)]).unwrap_err();
        assert!(matches!(
            err,
            CpuError::CacheLineDisagreement {
                first: 64,
                position: 3,
                other: 128
            }
        ));
    }

    #[test]
    fn intersection_restores_on_every_member() {
        let sets = [
            info(&["fpu", "sse2", "avx2"], 64),
            info(&["fpu", "avx2", "avx512f"], 64),
            info(&["fpu", "avx2", "sse4a"], 64),
        ];
        let common = intersect(&sets).unwrap();
        for s in &sets {
            assert_eq!(check(&common, s), Ok(()));
        }
    }

    #[test]
    fn annotation_value_is_comma_joined_in_gvisor_order() {
        let i = info(&["avx512bw", "sse2", "fpu", "avx512f", "hypervisor"], 64);
        assert_eq!(annotation_value(&i), "fpu,sse2,hypervisor,avx512f,avx512bw");
    }

    #[test]
    fn json_round_trips_in_the_documented_shape() {
        let i = info(&["fpu", "sse2"], 64);
        let text = to_json_pretty(&i);
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"vendor": "GenuineIntel", "family": 6, "model": 85,
                "stepping": 7, "cache_line_size": 64, "features": ["fpu", "sse2"]})
        );
        assert_eq!(from_json(&text).unwrap(), i);
    }

    #[test]
    fn from_json_sorts_dedups_and_keeps_unknown_names() {
        let text = r#"{"vendor":"GenuineIntel","family":6,"model":85,"stepping":7,
            "cache_line_size":64,"features":["sse2","fpu","sse2","future_feature"]}"#;
        assert_eq!(
            from_json(text).unwrap().features,
            ["fpu", "future_feature", "sse2"]
        );
    }

    #[test]
    fn from_json_refuses_oversized_malformed_and_invalid_input() {
        let big = " ".repeat(MAX_JSON_LEN + 1);
        assert!(matches!(from_json(&big), Err(CpuError::TooLarge { .. })));
        let err = from_json(r#"{"vendor":"x"}"#).unwrap_err();
        assert_eq!(err.to_string(), "malformed CPU feature set JSON");
        assert!(std::error::Error::source(&err)
            .unwrap()
            .to_string()
            .contains("missing field"));
        let bad = r#"{"vendor":"x","family":6,"model":1,"stepping":0,"cache_line_size":64,
            "features":["Fpu"]}"#;
        assert!(from_json(bad)
            .unwrap_err()
            .to_string()
            .contains("feature name \"Fpu\""));
        let many: Vec<String> = (0..=MAX_FEATURES).map(|i| format!("f{i}")).collect();
        let text = serde_json::json!({"vendor":"x","family":6,"model":1,"stepping":0,
            "cache_line_size":64,"features": many})
        .to_string();
        assert!(from_json(&text)
            .unwrap_err()
            .to_string()
            .contains("more than 1024"));
    }
}
