//! Recorded CPUID registers, replayed through raw-cpuid's [`CpuIdReader`] so that a dump of a
//! real CPU drives [`capture`](crate::capture) exactly as the live `cpuid` instruction does.
//!
//! The JSON form (what `fixtures/*.json` hold) is an object with a `leaves` array; every entry
//! names a leaf, a subleaf and the four registers, as numbers or as `"0x…"` hex strings:
//!
//! ```json
//! {"leaves": [{"leaf": "0x1", "subleaf": "0x0",
//!              "eax": "0x000306a9", "ebx": "0x02100800", "ecx": "0x7dbae3bf", "edx": "0xbfebfbff"}]}
//! ```
//!
//! Other members (descriptions, sources, expected results) are ignored. A leaf or subleaf that
//! the dump does not hold reads as all zeros.

use std::collections::BTreeMap;

use raw_cpuid::{CpuIdReader, CpuIdResult};
use serde::Deserialize;

use crate::CpuError;

/// Largest register dump [`RegisterDump::from_json`] accepts.
pub const MAX_DUMP_JSON_LEN: usize = 1 << 20;

/// A CPUID register the dump can be edited in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Register {
    Eax,
    Ebx,
    Ecx,
    Edx,
}

/// CPUID results keyed by (leaf, subleaf).
#[derive(Clone, Debug, Default)]
pub struct RegisterDump {
    leaves: BTreeMap<(u32, u32), [u32; 4]>,
}

#[derive(Deserialize)]
struct DumpFile {
    leaves: Vec<LeafEntry>,
}

#[derive(Deserialize)]
struct LeafEntry {
    leaf: Word,
    #[serde(default)]
    subleaf: Option<Word>,
    eax: Word,
    ebx: Word,
    ecx: Word,
    edx: Word,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Word {
    Number(u32),
    Text(String),
}

impl Word {
    fn value(&self) -> Result<u32, CpuError> {
        match self {
            Word::Number(n) => Ok(*n),
            Word::Text(s) => {
                let hex = s
                    .strip_prefix("0x")
                    .or_else(|| s.strip_prefix("0X"))
                    .ok_or_else(|| {
                        CpuError::InvalidDump(format!("{s:?} is not a 0x-prefixed hex number"))
                    })?;
                u32::from_str_radix(&hex.replace('_', ""), 16)
                    .map_err(|_| CpuError::InvalidDump(format!("{s:?} is not a 32-bit hex number")))
            }
        }
    }
}

impl RegisterDump {
    /// An empty dump: every leaf reads as zeros.
    pub fn new() -> Self {
        Self::default()
    }

    /// Parses the JSON form described in the module documentation.
    pub fn from_json(text: &str) -> Result<Self, CpuError> {
        if text.len() > MAX_DUMP_JSON_LEN {
            return Err(CpuError::TooLarge {
                what: "CPUID register dump",
                len: text.len(),
                max: MAX_DUMP_JSON_LEN,
            });
        }
        let file: DumpFile = serde_json::from_str(text).map_err(|source| CpuError::Json {
            what: "CPUID register dump",
            source,
        })?;
        let mut dump = Self::new();
        for e in &file.leaves {
            let key = (
                e.leaf.value()?,
                e.subleaf
                    .as_ref()
                    .map(Word::value)
                    .transpose()?
                    .unwrap_or(0),
            );
            let regs = [
                e.eax.value()?,
                e.ebx.value()?,
                e.ecx.value()?,
                e.edx.value()?,
            ];
            if dump.leaves.insert(key, regs).is_some() {
                return Err(CpuError::InvalidDump(format!(
                    "leaf {:#x} subleaf {:#x} appears twice",
                    key.0, key.1
                )));
            }
        }
        Ok(dump)
    }

    /// Records the registers of `leaf`/`subleaf`.
    pub fn insert(&mut self, leaf: u32, subleaf: u32, eax: u32, ebx: u32, ecx: u32, edx: u32) {
        self.leaves.insert((leaf, subleaf), [eax, ebx, ecx, edx]);
    }

    /// Sets the bits of `mask` in one register of `leaf`/`subleaf` (creating the leaf as zeros
    /// if the dump lacks it). Used to derive a CPU from a recorded one, e.g. the same CPU seen
    /// from inside a VM (leaf 1 ECX bit 31, `hypervisor`).
    pub fn set_bits(&mut self, leaf: u32, subleaf: u32, register: Register, mask: u32) {
        let regs = self.leaves.entry((leaf, subleaf)).or_default();
        regs[register as usize] |= mask;
    }

    /// Clears the bits of `mask` in one register of `leaf`/`subleaf`.
    pub fn clear_bits(&mut self, leaf: u32, subleaf: u32, register: Register, mask: u32) {
        if let Some(regs) = self.leaves.get_mut(&(leaf, subleaf)) {
            regs[register as usize] &= !mask;
        }
    }
}

impl CpuIdReader for RegisterDump {
    fn cpuid2(&self, eax: u32, ecx: u32) -> CpuIdResult {
        let [eax, ebx, ecx, edx] = self.leaves.get(&(eax, ecx)).copied().unwrap_or_default();
        CpuIdResult { eax, ebx, ecx, edx }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_hex_and_decimal_words_and_reads_missing_leaves_as_zero() {
        let d = RegisterDump::from_json(
            r#"{"leaves":[{"leaf":"0x1","subleaf":"0x0","eax":1,"ebx":"0x0210_0800","ecx":"0x0","edx":"0X10"}]}"#,
        )
        .unwrap();
        let r = d.cpuid2(1, 0);
        assert_eq!((r.eax, r.ebx, r.ecx, r.edx), (1, 0x0210_0800, 0, 0x10));
        assert!(d.cpuid2(7, 0).all_zero());
    }

    #[test]
    fn rejects_bad_words_duplicates_and_oversized_input() {
        let bad = r#"{"leaves":[{"leaf":"1","eax":0,"ebx":0,"ecx":0,"edx":0}]}"#;
        assert!(RegisterDump::from_json(bad)
            .unwrap_err()
            .to_string()
            .contains("not a 0x-prefixed hex number"));
        let dup = r#"{"leaves":[{"leaf":1,"eax":0,"ebx":0,"ecx":0,"edx":0},{"leaf":1,"subleaf":0,"eax":0,"ebx":0,"ecx":0,"edx":0}]}"#;
        assert!(RegisterDump::from_json(dup)
            .unwrap_err()
            .to_string()
            .contains("appears twice"));
        let big = " ".repeat(MAX_DUMP_JSON_LEN + 1);
        assert!(matches!(
            RegisterDump::from_json(&big),
            Err(CpuError::TooLarge { .. })
        ));
    }

    #[test]
    fn set_and_clear_bits_edit_one_register() {
        let mut d = RegisterDump::new();
        d.set_bits(1, 0, Register::Ecx, 1 << 31);
        assert_eq!(d.cpuid2(1, 0).ecx, 1 << 31);
        d.clear_bits(1, 0, Register::Ecx, 1 << 31);
        assert_eq!(d.cpuid2(1, 0).ecx, 0);
    }
}
