//! The manifest: one immutable JSON document per snapshot, `manifests/<id>.json`, written
//! last with a create-only put. It names every file of the snapshot and the index object that
//! rebuilds it, and carries the facts a restore checks before downloading anything.
//!
//! `digest` is the sha256 (hex) of the canonical JSON of the manifest without its `digest`
//! member: object keys sorted, no insignificant whitespace. It is checked on every read, over
//! the document as stored (so fields added by a newer minor version are covered too).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::id::SnapshotId;
use crate::limits::{MAX_FILES, MAX_FILE_SIZE, MAX_INDEX_SIZE, MAX_MAP_ENTRIES, MAX_PATH_LEN};
use crate::StoreError;

/// The format version this build writes for plain snapshots.
pub const FORMAT_VERSION: &str = "1.0";
/// The format version of encrypted snapshots (1.0 plus `encryption` and `mac`).
pub const FORMAT_VERSION_ENCRYPTED: &str = "1.1";
/// Most packs an encrypted manifest may list (4 PiB of 4 MiB packs).
const MAX_PACKS: usize = 1 << 30;
/// The major version this build reads.
pub const FORMAT_MAJOR: u64 = 1;

/// Facts about the node a snapshot was taken on.
#[derive(Serialize, Deserialize, Default, Clone, Debug, PartialEq)]
#[serde(default)]
pub struct NodeFacts {
    pub node_name: String,
    pub cpu: Option<podsnap_cpu::CpuInfo>,
    pub runsc_version: Option<String>,
    pub platform: Option<String>,
    /// The rootfs overlay medium (`memory`, `self`, ...) or `None` when writes stayed on the
    /// source node's rootfs.
    pub rootfs_overlay: Option<String>,
    pub extra: BTreeMap<String, String>,
}

/// Most containers a snapshot's sandbox may list.
pub const MAX_CONTAINERS: usize = 256;

/// The part a container plays in its sandbox.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum ContainerRole {
    /// The root container (the pause container of a pod): restoring it restores the sandbox.
    Root,
    /// Another container, restored after the root.
    Container,
}

/// One container of the checkpointed sandbox, in restore order (root first).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct ContainerRecord {
    /// The name a restore matches it by: the CRI container name, or the runsc id when the CRI
    /// did not create it.
    pub name: String,
    pub role: ContainerRole,
    /// The runsc container id it had on the source node.
    pub id: String,
}

/// The Kubernetes pod a snapshot was taken of.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct PodRef {
    pub namespace: String,
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uid: Option<String>,
}

/// What was checkpointed: the sandbox's containers and, for a pod, which pod.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(default)]
pub struct SandboxRecord {
    pub containers: Vec<ContainerRecord>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pod: Option<PodRef>,
}

/// Reference to a file's index object.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct IndexRef {
    /// sha256 (hex) of the uncompressed index; the object is `indexes/<digest>`.
    pub digest: String,
    /// Uncompressed size in bytes (decompression is bounded by it).
    pub size: u64,
}

/// One file of a snapshot.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct FileEntry {
    /// Relative path, `/`-separated, no `.`/`..` components.
    pub path: String,
    pub size: u64,
    /// Permission bits (`0o777` at most).
    pub mode: u32,
    pub index: IndexRef,
    /// Bytes of all-zero pages (not stored; holes after a pull).
    #[serde(default)]
    pub zero_bytes: u64,
}

/// Sums over the files.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(default)]
pub struct Totals {
    pub files: u64,
    pub bytes: u64,
    pub zero_bytes: u64,
    /// Bytes this push uploaded (packs and indexes).
    pub bytes_uploaded: u64,
    /// Objects this push wrote (packs and indexes, not the manifest).
    pub objects_written: u64,
}

/// How an encrypted snapshot is sealed (see `crypto`).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct Encryption {
    /// `aes-256-gcm`.
    pub algorithm: String,
    /// The public id of the group key that sealed the snapshot.
    pub key_id: String,
    /// Every pack the snapshot's (sealed) indexes reference, sorted: what gc keeps alive
    /// without a key.
    pub packs: Vec<String>,
}

/// A snapshot manifest.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct Manifest {
    pub format_version: String,
    pub id: SnapshotId,
    /// RFC 3339, UTC.
    pub created: String,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    #[serde(default)]
    pub group: Option<String>,
    #[serde(default)]
    pub parent: Option<SnapshotId>,
    #[serde(default)]
    pub source: NodeFacts,
    #[serde(default)]
    pub runsc_metadata: BTreeMap<String, String>,
    /// The sandbox's containers and pod (absent in manifests of single-container snapshots
    /// written before containers were recorded).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sandbox: Option<SandboxRecord>,
    pub files: Vec<FileEntry>,
    #[serde(default)]
    pub totals: Totals,
    /// Present when the snapshot's data is encrypted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encryption: Option<Encryption>,
    /// sha256 of the canonical manifest without this field and `mac`.
    #[serde(default)]
    pub digest: String,
    /// Encrypted snapshots: HMAC-SHA256 of `digest` under the group key's mac sub-key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac: Option<String>,
}

/// Serialises `v` canonically: keys sorted at every level, compact.
fn canonical(v: &Value) -> Vec<u8> {
    fn sort(v: &Value) -> Value {
        match v {
            Value::Object(m) => {
                let sorted: BTreeMap<&String, Value> =
                    m.iter().map(|(k, v)| (k, sort(v))).collect();
                let mut out = serde_json::Map::new();
                for (k, v) in sorted {
                    out.insert(k.clone(), v);
                }
                Value::Object(out)
            }
            Value::Array(a) => Value::Array(a.iter().map(sort).collect()),
            other => other.clone(),
        }
    }
    // With serde_json's default map (a BTreeMap) `sort` is a no-op; with `preserve_order`
    // enabled elsewhere in the build it makes the order canonical.
    serde_json::to_vec(&sort(v)).expect("json value serialises")
}

fn digest_of(v: &Value) -> String {
    let mut v = v.clone();
    if let Value::Object(m) = &mut v {
        m.remove("digest");
        m.remove("mac");
    }
    hex::encode(crate::chunk::sha256(&canonical(&v)))
}

impl Manifest {
    /// Fills in `digest` (and, with a key, `mac`) and returns the JSON to store.
    pub fn seal(&mut self, key: Option<&crate::crypto::Key>) -> Vec<u8> {
        self.digest.clear();
        self.mac = None;
        let v = serde_json::to_value(&*self).expect("manifest serialises");
        self.digest = digest_of(&v);
        self.mac = key.map(|k| self.expected_mac(k));
        let v = serde_json::to_value(&*self).expect("manifest serialises");
        let mut out = serde_json::to_vec_pretty(&v).expect("manifest serialises");
        out.push(b'\n');
        out
    }

    /// Parses and validates a stored manifest. `expect_id` is the id it was stored under.
    pub fn parse(bytes: &[u8], expect_id: &str) -> Result<Manifest, StoreError> {
        let bad = |reason: String| StoreError::InvalidManifest {
            id: expect_id.to_string(),
            reason,
        };
        let v: Value = serde_json::from_slice(bytes).map_err(|e| bad(format!("not json: {e}")))?;
        let version = v
            .get("format_version")
            .and_then(Value::as_str)
            .ok_or_else(|| bad("missing format_version".into()))?;
        check_version(expect_id, version)?;
        let stored_digest = v
            .get("digest")
            .and_then(Value::as_str)
            .ok_or_else(|| bad("missing digest".into()))?;
        if digest_of(&v) != stored_digest {
            return Err(bad("digest mismatch (manifest altered or corrupt)".into()));
        }
        let m: Manifest =
            serde_json::from_value(v).map_err(|e| bad(format!("unexpected structure: {e}")))?;
        if m.id.as_str() != expect_id {
            return Err(bad(format!("manifest names itself {}", m.id)));
        }
        m.validate().map_err(bad)?;
        match (&m.encryption, &m.mac) {
            (None, None) => {}
            (Some(_), Some(mac)) if mac.len() == 64 && hex::decode(mac).is_ok() => {}
            (Some(_), _) => return Err(bad("encrypted manifest without a valid mac".into())),
            (None, Some(_)) => return Err(bad("mac without encryption".into())),
        }
        Ok(m)
    }

    /// The `mac` that `key` gives this manifest's digest.
    pub fn expected_mac(&self, key: &crate::crypto::Key) -> String {
        hex::encode(key.mac(b"podsnap manifest", self.digest.as_bytes()))
    }

    /// Checks every untrusted path, size and count.
    pub fn validate(&self) -> Result<(), String> {
        let is_hex = |s: &str, len: usize| s.len() == len && hex::decode(s).is_ok();
        if let Some(e) = &self.encryption {
            if e.algorithm != crate::crypto::ALGORITHM {
                return Err(format!(
                    "unsupported encryption {:?}",
                    e.algorithm.chars().take(32).collect::<String>()
                ));
            }
            if !is_hex(&e.key_id, 32) {
                return Err("malformed key id".into());
            }
            if e.packs.len() > MAX_PACKS || !e.packs.iter().all(|p| is_hex(p, 64)) {
                return Err("malformed pack list".into());
            }
        }
        if time::OffsetDateTime::parse(
            &self.created,
            &time::format_description::well_known::Rfc3339,
        )
        .is_err()
        {
            return Err(format!("created {:?} is not RFC 3339", self.created));
        }
        if self.files.len() > MAX_FILES {
            return Err(format!(
                "{} files exceed the limit of {MAX_FILES}",
                self.files.len()
            ));
        }
        for (name, map) in [
            ("labels", &self.labels),
            ("runsc_metadata", &self.runsc_metadata),
            ("source.extra", &self.source.extra),
        ] {
            if map.len() > MAX_MAP_ENTRIES {
                return Err(format!("{name} has more than {MAX_MAP_ENTRIES} entries"));
            }
        }
        if let Some(sb) = &self.sandbox {
            validate_sandbox(sb)?;
        }
        let mut seen = std::collections::BTreeSet::new();
        for f in &self.files {
            validate_rel_path(&f.path)?;
            if !seen.insert(f.path.as_str()) {
                return Err(format!("file {:?} listed twice", f.path));
            }
            if f.size > MAX_FILE_SIZE {
                return Err(format!(
                    "file {:?}: size {} exceeds the 1 TiB limit",
                    f.path, f.size
                ));
            }
            if f.zero_bytes > f.size {
                return Err(format!("file {:?}: zero_bytes exceeds size", f.path));
            }
            if f.mode > 0o777 {
                return Err(format!(
                    "file {:?}: mode {:o} has bits beyond 0777",
                    f.path, f.mode
                ));
            }
            if !is_hex(&f.index.digest, 64) {
                return Err(format!("file {:?}: index digest is not a sha256", f.path));
            }
            if f.index.size > MAX_INDEX_SIZE {
                return Err(format!(
                    "file {:?}: index size {} exceeds the limit",
                    f.path, f.index.size
                ));
            }
        }
        // A file may not also be a directory of another file (`a` and `a/b`).
        for f in &self.files {
            let mut p = f.path.as_str();
            while let Some((parent, _)) = p.rsplit_once('/') {
                if seen.contains(parent) {
                    return Err(format!("file {parent:?} is also a directory"));
                }
                p = parent;
            }
        }
        Ok(())
    }
}

fn validate_sandbox(sb: &SandboxRecord) -> Result<(), String> {
    let short = |s: &str| s.chars().take(64).collect::<String>();
    let name_ok = |s: &str| !s.is_empty() && s.len() <= 253 && !s.chars().any(char::is_control);
    if sb.containers.len() > MAX_CONTAINERS {
        return Err(format!(
            "{} containers exceed the limit of {MAX_CONTAINERS}",
            sb.containers.len()
        ));
    }
    let mut names = std::collections::BTreeSet::new();
    for (i, c) in sb.containers.iter().enumerate() {
        if !name_ok(&c.name) || !name_ok(&c.id) {
            return Err(format!("container {i} has a malformed name or id"));
        }
        if !names.insert(c.name.as_str()) {
            return Err(format!("container {:?} listed twice", short(&c.name)));
        }
        if (c.role == ContainerRole::Root) != (i == 0) {
            return Err("the root container must be listed first, and only once".into());
        }
    }
    if let Some(p) = &sb.pod {
        if !name_ok(&p.namespace) || !name_ok(&p.name) {
            return Err("malformed pod namespace or name".into());
        }
    }
    Ok(())
}

fn check_version(id: &str, version: &str) -> Result<(), StoreError> {
    let major = version
        .split('.')
        .next()
        .and_then(|m| m.parse::<u64>().ok());
    match major {
        Some(FORMAT_MAJOR) => Ok(()),
        _ => Err(StoreError::UnsupportedFormat {
            id: id.to_string(),
            version: version.chars().take(32).collect(),
        }),
    }
}

/// A path inside a snapshot: relative, `/`-separated, no empty, `.` or `..` components, no
/// NUL or backslash, bounded length.
pub fn validate_rel_path(p: &str) -> Result<(), String> {
    if p.is_empty() {
        return Err("empty file path".into());
    }
    if p.len() > MAX_PATH_LEN {
        return Err("file path too long".into());
    }
    if p.starts_with('/') {
        return Err(format!("absolute file path {p:?}"));
    }
    if p.contains('\0') || p.contains('\\') {
        return Err(format!("file path {p:?} contains NUL or backslash"));
    }
    for c in p.split('/') {
        if c.is_empty() || c == "." || c == ".." {
            return Err(format!(
                "file path {p:?} has an empty, '.' or '..' component"
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn sample() -> Manifest {
        Manifest {
            format_version: FORMAT_VERSION.into(),
            id: SnapshotId::new("snap-1").unwrap(),
            created: "2026-01-01T00:00:00Z".into(),
            labels: [("app".to_string(), "web".to_string())].into(),
            group: Some("web".into()),
            parent: None,
            source: NodeFacts::default(),
            runsc_metadata: BTreeMap::new(),
            sandbox: None,
            files: vec![FileEntry {
                path: "pages.img".into(),
                size: 8192,
                mode: 0o644,
                index: IndexRef {
                    digest: "ab".repeat(32),
                    size: 100,
                },
                zero_bytes: 0,
            }],
            totals: Totals::default(),
            encryption: None,
            digest: String::new(),
            mac: None,
        }
    }

    fn pod() -> SandboxRecord {
        let c = |name: &str, role| ContainerRecord {
            name: name.into(),
            role,
            id: format!("id-{name}"),
        };
        SandboxRecord {
            containers: vec![
                c("pause", ContainerRole::Root),
                c("app", ContainerRole::Container),
                c("sidecar", ContainerRole::Container),
            ],
            pod: Some(PodRef {
                namespace: "team-a".into(),
                name: "web-0".into(),
                uid: None,
            }),
        }
    }

    #[test]
    fn a_pod_manifest_round_trips_its_containers_in_order() {
        let mut m = sample();
        m.sandbox = Some(pod());
        let bytes = m.seal(None);
        let back = Manifest::parse(&bytes, "snap-1").unwrap();
        let sb = back.sandbox.unwrap();
        let names: Vec<_> = sb.containers.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(names, ["pause", "app", "sidecar"]);
        assert_eq!(sb.pod.unwrap().namespace, "team-a");
    }

    #[test]
    fn a_pod_manifest_with_a_misplaced_root_or_duplicate_name_is_rejected() {
        let mut m = sample();
        let mut sb = pod();
        sb.containers.swap(0, 1);
        m.sandbox = Some(sb);
        let err = Manifest::parse(&m.seal(None), "snap-1").unwrap_err();
        assert!(err.to_string().contains("root container"), "{err}");
        let mut sb = pod();
        sb.containers[2].name = "app".into();
        m.sandbox = Some(sb);
        let err = Manifest::parse(&m.seal(None), "snap-1").unwrap_err();
        assert!(err.to_string().contains("listed twice"), "{err}");
    }

    #[test]
    fn sealed_manifest_parses_back() {
        let mut m = sample();
        let bytes = m.seal(None);
        let back = Manifest::parse(&bytes, "snap-1").unwrap();
        assert_eq!(back, m);
        assert_eq!(back.digest.len(), 64);
    }

    #[test]
    fn altered_manifest_fails_digest() {
        let mut m = sample();
        let bytes = String::from_utf8(m.seal(None)).unwrap();
        let altered = bytes.replace("\"web\"", "\"evil\"");
        assert_ne!(altered, bytes);
        let err = Manifest::parse(altered.as_bytes(), "snap-1").unwrap_err();
        assert!(err.to_string().contains("digest mismatch"), "{err}");
    }

    fn resealed(f: impl FnOnce(&mut Value)) -> Vec<u8> {
        let mut v = serde_json::to_value(sample()).unwrap();
        f(&mut v);
        let d = digest_of(&v);
        v["digest"] = Value::String(d);
        serde_json::to_vec(&v).unwrap()
    }

    #[test]
    fn unknown_major_version_is_rejected_and_minor_accepted() {
        let err = Manifest::parse(&resealed(|v| v["format_version"] = "2.0".into()), "snap-1")
            .unwrap_err();
        assert!(matches!(err, StoreError::UnsupportedFormat { .. }), "{err}");
        let ok = resealed(|v| {
            v["format_version"] = "1.7".into();
            v["future_field"] = 42.into();
        });
        assert!(Manifest::parse(&ok, "snap-1").is_ok());
    }

    #[test]
    fn hostile_paths_and_sizes_are_rejected() {
        type Edit = Box<dyn Fn(&mut Value)>;
        let cases: Vec<(&str, Edit)> = vec![
            (
                "'..'",
                Box::new(|v| v["files"][0]["path"] = "../etc/passwd".into()),
            ),
            (
                "absolute",
                Box::new(|v| v["files"][0]["path"] = "/etc/passwd".into()),
            ),
            (
                "NUL",
                Box::new(|v| v["files"][0]["path"] = "a\u{0}b".into()),
            ),
            (
                "'..'",
                Box::new(|v| v["files"][0]["path"] = "a/../../b".into()),
            ),
            (
                "1 TiB",
                Box::new(|v| v["files"][0]["size"] = (1u64 << 50).into()),
            ),
            (
                "index size",
                Box::new(|v| v["files"][0]["index"]["size"] = (1u64 << 40).into()),
            ),
            ("mode", Box::new(|v| v["files"][0]["mode"] = 0o4755.into())),
            (
                "not a sha256",
                Box::new(|v| v["files"][0]["index"]["digest"] = "../x".into()),
            ),
            ("invalid snapshot id", Box::new(|v| v["id"] = "../x".into())),
        ];
        for (want, f) in cases {
            let err = Manifest::parse(&resealed(f), "snap-1")
                .unwrap_err()
                .to_string();
            assert!(err.contains(want), "expected {want:?} in {err}");
        }
    }

    #[test]
    fn file_and_directory_with_same_name_are_rejected() {
        let bytes = resealed(|v| {
            let mut second = v["files"][0].clone();
            second["path"] = "pages.img/inner".into();
            v["files"].as_array_mut().unwrap().push(second);
        });
        let err = Manifest::parse(&bytes, "snap-1").unwrap_err().to_string();
        assert!(err.contains("also a directory"), "{err}");
    }

    #[test]
    fn manifest_stored_under_another_id_is_rejected() {
        let mut m = sample();
        let err = Manifest::parse(&m.seal(None), "other")
            .unwrap_err()
            .to_string();
        assert!(err.contains("names itself"), "{err}");
    }
}
