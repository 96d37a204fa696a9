//! Snapshot ids: the name under which a manifest is committed (`manifests/<id>.json`).

use std::fmt;
use std::str::FromStr;

use rand::Rng;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::StoreError;

/// Longest accepted snapshot id.
pub const MAX_ID_LEN: usize = 128;

/// A validated snapshot id: 1..=128 characters from `[A-Za-z0-9._-]`, not starting with `.`.
///
/// Generated ids (`SnapshotId::generate`) look like `20260101T120000Z-1a2b3c4d`, so that
/// sorting them as strings sorts them by creation time.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SnapshotId(String);

impl SnapshotId {
    /// Validates `s` as a snapshot id.
    pub fn new(s: impl Into<String>) -> Result<Self, StoreError> {
        let s = s.into();
        let bad = |reason: &str| StoreError::InvalidSnapshotId {
            id: s.chars().take(MAX_ID_LEN + 8).collect(),
            reason: reason.to_string(),
        };
        if s.is_empty() {
            return Err(bad("empty"));
        }
        if s.len() > MAX_ID_LEN {
            return Err(bad("longer than 128 characters"));
        }
        if s.starts_with('.') {
            return Err(bad("starts with '.'"));
        }
        if !s
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
        {
            return Err(bad("only A-Z a-z 0-9 . _ - are allowed"));
        }
        Ok(SnapshotId(s))
    }

    /// A fresh id: `<UTC yyyymmddThhmmss>Z-<8 hex>`.
    pub fn generate() -> Self {
        let now = time::OffsetDateTime::now_utc();
        let fmt = time::macros::format_description!("[year][month][day]T[hour][minute][second]Z");
        let stamp = now
            .format(&fmt)
            .unwrap_or_else(|_| "19700101T000000Z".into());
        let suffix: u32 = rand::thread_rng().gen();
        SnapshotId(format!("{stamp}-{suffix:08x}"))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for SnapshotId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for SnapshotId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SnapshotId({})", self.0)
    }
}

impl FromStr for SnapshotId {
    type Err = StoreError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        SnapshotId::new(s)
    }
}

impl AsRef<str> for SnapshotId {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl Serialize for SnapshotId {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for SnapshotId {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        SnapshotId::new(s).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_and_rejects_ids() {
        for ok in [
            "a",
            "A-b_c.d",
            "20260101T000000Z-deadbeef",
            &"x".repeat(128),
        ] {
            assert!(SnapshotId::new(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            ".hidden",
            "a/b",
            "..",
            "a b",
            "é",
            &"x".repeat(129),
            "a\0b",
        ] {
            assert!(SnapshotId::new(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn generated_ids_are_valid_and_sortable() {
        let a = SnapshotId::generate();
        assert!(SnapshotId::new(a.as_str()).is_ok());
        assert_eq!(a.as_str().len(), "20260101T000000Z-deadbeef".len());
        assert_eq!(&a.as_str()[8..9], "T");
        assert_eq!(&a.as_str()[15..17], "Z-");
    }
}
