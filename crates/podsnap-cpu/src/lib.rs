//! CPU feature sets with gVisor's names, and gVisor's compatibility rule.

use serde::{Deserialize, Serialize};

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
