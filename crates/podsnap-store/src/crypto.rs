//! Encryption at rest: per-group keys, AES-256-GCM for blobs and indexes, HMAC-SHA256 for
//! names and the manifest.
//!
//! A [`Key`] is 32 secret bytes. Three sub-keys are derived from it with HMAC-SHA256 over a
//! fixed label, so the secret itself never meets the data:
//!
//! ```text
//! aes key   = HMAC(key, "podsnap aes-256-gcm")    seals blobs and indexes
//! mac key   = HMAC(key, "podsnap mac")            index digests, pack names, manifest mac
//! key id    = hex(HMAC(key, "podsnap key id"))[..32]   public: names the key in manifests
//! ```
//!
//! A sealed object or blob is `nonce (12 random bytes) || ciphertext || tag (16 bytes)`, with a
//! fixed associated-data label per kind (blob: label, inner codec and raw length). Blobs are
//! compressed before they are sealed; each blob is sealed alone, so ranged reads still work.
//! Random 96-bit nonces stay far below GCM's collision bound: 2^32 blobs is 4 PiB of data
//! under one key.
//!
//! A [`Keyring`] maps groups to keys. On disk (a directory, such as a mounted Kubernetes
//! Secret) it holds one file per key: `default` (every group without its own key, and
//! snapshots without a group) and `group.<encoded group>` (see [`Keyring::file_name`]). A key
//! file holds the 32 bytes raw or as 64 hex digits (surrounding whitespace ignored). Names
//! starting with `.` are skipped (a Secret volume's `..data` links).

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::StoreError;

/// The algorithm name recorded in manifests.
pub const ALGORITHM: &str = "aes-256-gcm";
const NONCE_LEN: usize = 12;
const TAG_LEN: usize = 16;
/// Bytes a sealed blob or object is longer than its plaintext.
pub const SEAL_OVERHEAD: usize = NONCE_LEN + TAG_LEN;
/// Key files are tiny; anything larger is a mistake.
const MAX_KEY_FILE: u64 = 1024;

/// Associated data of a sealed index object.
pub(crate) const INDEX_AAD: &[u8] = b"podsnap index";

type HmacSha256 = Hmac<Sha256>;

fn hmac(key: &[u8], parts: &[&[u8]]) -> [u8; 32] {
    let mut m = <HmacSha256 as Mac>::new_from_slice(key).expect("hmac takes any key length");
    for p in parts {
        m.update(p);
    }
    m.finalize().into_bytes().into()
}

/// A 32-byte group key with its derived sub-keys. `Debug` shows only the public key id.
#[derive(Clone)]
pub struct Key {
    aes: Aes256Gcm,
    mac: [u8; 32],
    id: String,
}

impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Key").field("id", &self.id).finish()
    }
}

impl Key {
    pub fn from_bytes(secret: &[u8; 32]) -> Key {
        let aes = hmac(secret, &[b"podsnap aes-256-gcm"]);
        let mac = hmac(secret, &[b"podsnap mac"]);
        let id = hex::encode(&hmac(secret, &[b"podsnap key id"])[..16]);
        Key {
            aes: Aes256Gcm::new(&aes.into()),
            mac,
            id,
        }
    }

    /// Reads a key file's content: 32 raw bytes, or 64 hex digits with optional whitespace.
    pub fn parse(content: &[u8]) -> Result<Key, String> {
        if let Ok(raw) = <[u8; 32]>::try_from(content) {
            return Ok(Key::from_bytes(&raw));
        }
        let text = content.trim_ascii();
        if text.len() == 64 {
            if let Ok(raw) = hex::decode(text) {
                let raw: [u8; 32] = raw.try_into().expect("64 hex digits are 32 bytes");
                return Ok(Key::from_bytes(&raw));
            }
        }
        Err(format!(
            "a key is 32 bytes, raw or as 64 hex digits; this one has {} bytes",
            content.len()
        ))
    }

    /// 32 fresh random bytes for a new key.
    pub fn generate_secret() -> [u8; 32] {
        rand::random()
    }

    /// The public name of this key, recorded in the manifests it seals.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// `nonce || AES-256-GCM(plain, aad)`.
    pub(crate) fn seal(&self, aad: &[u8], plain: &[u8]) -> Vec<u8> {
        let nonce: [u8; NONCE_LEN] = rand::random();
        let ct = self
            .aes
            .encrypt(Nonce::from_slice(&nonce), Payload { msg: plain, aad })
            .expect("aes-gcm encrypts any input below 64 GiB");
        let mut out = Vec::with_capacity(NONCE_LEN + ct.len());
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&ct);
        out
    }

    /// Opens what [`Key::seal`] made; fails on any change to the bytes or the wrong key.
    pub(crate) fn open(&self, aad: &[u8], sealed: &[u8]) -> Result<Vec<u8>, String> {
        if sealed.len() < SEAL_OVERHEAD {
            return Err("sealed data shorter than nonce and tag".into());
        }
        let (nonce, ct) = sealed.split_at(NONCE_LEN);
        self.aes
            .decrypt(Nonce::from_slice(nonce), Payload { msg: ct, aad })
            .map_err(|_| "authentication failed (wrong key or altered data)".to_string())
    }

    /// HMAC-SHA256 under the mac sub-key, over a label and the data.
    pub(crate) fn mac(&self, label: &[u8], data: &[u8]) -> [u8; 32] {
        hmac(&self.mac, &[label, b"\0", data])
    }
}

/// Associated data of a sealed blob: the codec inside the seal and the raw length.
pub(crate) fn blob_aad(inner_codec: u8, raw_len: u32) -> [u8; 17] {
    let mut aad = [0u8; 17];
    aad[..12].copy_from_slice(b"podsnap blob");
    aad[12] = inner_codec;
    aad[13..].copy_from_slice(&raw_len.to_le_bytes());
    aad
}

/// Keys by group, plus an optional default key.
#[derive(Clone, Debug, Default)]
pub struct Keyring {
    groups: BTreeMap<String, Key>,
    default: Option<Key>,
}

impl Keyring {
    pub fn new() -> Keyring {
        Keyring::default()
    }

    pub fn is_empty(&self) -> bool {
        self.groups.is_empty() && self.default.is_none()
    }

    /// Number of keys (the default counts as one).
    pub fn len(&self) -> usize {
        self.groups.len() + usize::from(self.default.is_some())
    }

    pub fn set_group(&mut self, group: &str, key: Key) {
        self.groups.insert(group.to_string(), key);
    }

    pub fn set_default(&mut self, key: Key) {
        self.default = Some(key);
    }

    /// The key that seals snapshots of `group`: its own, else the default.
    pub fn for_group(&self, group: Option<&str>) -> Option<&Key> {
        group
            .and_then(|g| self.groups.get(g))
            .or(self.default.as_ref())
    }

    /// The key file name of `group`: `group.` and the group's UTF-8 bytes, where every byte
    /// outside `[A-Za-z0-9.-]` is written `_xx` (lowercase hex). The result is a valid
    /// Kubernetes Secret key and a plain file name, and different groups get different names:
    /// `app=shop,tier=web` is `group.app_3dshop_2ctier_3dweb`.
    pub fn file_name(group: &str) -> String {
        let mut out = String::from("group.");
        for b in group.bytes() {
            if b.is_ascii_alphanumeric() || b == b'.' || b == b'-' {
                out.push(b as char);
            } else {
                out.push_str(&format!("_{b:02x}"));
            }
        }
        out
    }

    /// The group a key file name stands for, `None` when it is not a `group.` name.
    pub fn group_of_file_name(name: &str) -> Option<String> {
        let enc = name.strip_prefix("group.")?.as_bytes();
        let mut out = Vec::with_capacity(enc.len());
        let mut i = 0;
        while i < enc.len() {
            match enc[i] {
                b'_' => {
                    let hex = enc.get(i + 1..i + 3)?;
                    out.push(u8::from_str_radix(std::str::from_utf8(hex).ok()?, 16).ok()?);
                    i += 3;
                }
                b if b.is_ascii_alphanumeric() || b == b'.' || b == b'-' => {
                    out.push(b);
                    i += 1;
                }
                _ => return None,
            }
        }
        let group = String::from_utf8(out).ok()?;
        // Only the canonical spelling (lowercase hex, escapes only where needed) names a group.
        (!group.is_empty() && Keyring::file_name(&group) == name).then_some(group)
    }

    /// Loads every key of a key directory (see the module docs).
    pub fn load_dir(dir: &Path) -> Result<Keyring, StoreError> {
        let bad = |reason: String| StoreError::KeyFile {
            path: dir.to_path_buf(),
            reason,
        };
        let rd =
            std::fs::read_dir(dir).map_err(|e| StoreError::io("read key directory", dir, e))?;
        let mut ring = Keyring::new();
        for entry in rd {
            let entry = entry.map_err(|e| StoreError::io("read key directory", dir, e))?;
            let name = entry.file_name();
            let Some(name) = name.to_str() else {
                return Err(bad(format!("file name {name:?} is not utf-8")));
            };
            if name.starts_with('.') {
                continue;
            }
            let path = entry.path();
            let md = std::fs::metadata(&path).map_err(|e| StoreError::io("stat", &path, e))?;
            if !md.is_file() {
                return Err(StoreError::KeyFile {
                    path,
                    reason: "not a regular file".into(),
                });
            }
            if md.len() > MAX_KEY_FILE {
                return Err(StoreError::KeyFile {
                    path,
                    reason: format!(
                        "{} bytes; a key file holds 32 bytes or 64 hex digits",
                        md.len()
                    ),
                });
            }
            let content = std::fs::read(&path).map_err(|e| StoreError::io("read", &path, e))?;
            let key = Key::parse(&content).map_err(|reason| StoreError::KeyFile {
                path: path.clone(),
                reason,
            })?;
            if name == "default" {
                ring.set_default(key);
            } else if let Some(group) = Keyring::group_of_file_name(name) {
                ring.set_group(&group, key);
            } else {
                return Err(StoreError::KeyFile {
                    path,
                    reason: "expected `default` or `group.<encoded group>` (podsnapctl keygen \
                             prints the name for a group)"
                        .into(),
                });
            }
        }
        Ok(ring)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn seal_open_round_trip_and_tamper_detection() {
        let k = Key::from_bytes(&[7; 32]);
        let sealed = k.seal(b"aad", b"hello pages");
        assert_eq!(sealed.len(), 11 + SEAL_OVERHEAD);
        assert!(!sealed.windows(5).any(|w| w == b"hello"));
        assert_eq!(k.open(b"aad", &sealed).unwrap(), b"hello pages");
        // Another aad, a flipped bit, another key, a truncation: all refused.
        assert!(k.open(b"other", &sealed).is_err());
        let mut bad = sealed.clone();
        bad[20] ^= 1;
        assert!(k.open(b"aad", &bad).is_err());
        assert!(Key::from_bytes(&[8; 32]).open(b"aad", &sealed).is_err());
        assert!(k.open(b"aad", &sealed[..SEAL_OVERHEAD - 1]).is_err());
        // Fresh nonces: the same plaintext seals differently.
        assert_ne!(k.seal(b"aad", b"x"), k.seal(b"aad", b"x"));
    }

    #[test]
    fn key_ids_are_stable_distinct_and_not_the_secret() {
        let a = Key::from_bytes(&[1; 32]);
        assert_eq!(a.id(), Key::from_bytes(&[1; 32]).id());
        assert_ne!(a.id(), Key::from_bytes(&[2; 32]).id());
        assert_eq!(a.id().len(), 32);
        assert!(!a.id().contains(&hex::encode([1u8; 16])));
        assert!(!format!("{a:?}").contains(&hex::encode([1u8; 32])));
    }

    #[test]
    fn key_files_are_raw_or_hex() {
        let raw = [0xabu8; 32];
        let id = Key::from_bytes(&raw).id().to_string();
        assert_eq!(Key::parse(&raw).unwrap().id(), id);
        let text = format!("  {}\n", hex::encode(raw));
        assert_eq!(Key::parse(text.as_bytes()).unwrap().id(), id);
        let err = Key::parse(b"short").unwrap_err();
        assert!(err.contains("32 bytes"), "{err}");
        assert!(Key::parse(&[b'z'; 64]).is_err());
    }

    #[test]
    fn group_file_names() {
        assert_eq!(
            Keyring::file_name("app=shop,tier=web"),
            "group.app_3dshop_2ctier_3dweb"
        );
        assert_eq!(Keyring::file_name("ns/c1"), "group.ns_2fc1");
        assert_eq!(Keyring::file_name("a_b"), "group.a_5fb");
        for bad in [
            "group.",
            "group.a_4",
            "group.a_zz",
            "group.a_41",
            "group.a_2F",
            "group.a_+f",
            "group.a b",
            "other",
        ] {
            assert_eq!(Keyring::group_of_file_name(bad), None, "{bad}");
        }
    }

    proptest! {
        #[test]
        fn group_file_names_round_trip(g in "\\PC{1,40}") {
            let name = Keyring::file_name(&g);
            prop_assert!(name.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b)));
            prop_assert_eq!(Keyring::group_of_file_name(&name), Some(g));
        }
    }

    #[test]
    fn load_dir_reads_a_secret_volume_layout() {
        let d = tempfile::tempdir().unwrap();
        let data = d.path().join("..2026_11_29");
        std::fs::create_dir(&data).unwrap();
        std::fs::write(data.join("default"), hex::encode([1u8; 32])).unwrap();
        std::fs::write(data.join(Keyring::file_name("ns/c1")), [2u8; 32]).unwrap();
        std::os::unix::fs::symlink("..2026_11_29", d.path().join("..data")).unwrap();
        std::os::unix::fs::symlink("..data/default", d.path().join("default")).unwrap();
        let name = Keyring::file_name("ns/c1");
        std::os::unix::fs::symlink(format!("..data/{name}"), d.path().join(&name)).unwrap();
        let ring = Keyring::load_dir(d.path()).unwrap();
        assert_eq!(ring.len(), 2);
        let own = Key::from_bytes(&[2; 32]);
        let default = Key::from_bytes(&[1; 32]);
        assert_eq!(ring.for_group(Some("ns/c1")).unwrap().id(), own.id());
        assert_eq!(ring.for_group(Some("other")).unwrap().id(), default.id());
        assert_eq!(ring.for_group(None).unwrap().id(), default.id());

        std::fs::write(d.path().join("stray"), [0u8; 32]).unwrap();
        let err = Keyring::load_dir(d.path()).unwrap_err().to_string();
        assert!(err.contains("stray") && err.contains("group."), "{err}");
        std::fs::remove_file(d.path().join("stray")).unwrap();
        std::fs::write(d.path().join("group.x"), b"not a key").unwrap();
        let err = Keyring::load_dir(d.path()).unwrap_err().to_string();
        assert!(err.contains("group.x") && err.contains("32 bytes"), "{err}");
        assert!(!err.contains("not a key"), "key material echoed: {err}");
    }
}
