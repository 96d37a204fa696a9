//! Shared test support: synthetic memory images, directory digests, and the two suites that
//! every backend runs: object store conformance (over `Arc<dyn ObjectStore>`) and the Store's
//! push/pull round trips.

#![allow(dead_code)]

pub mod faults;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use futures::TryStreamExt;
use object_store::path::Path as ObjPath;
use object_store::{ObjectStore, PutMode, PutOptions, PutPayload, WriteMultipart};
use podsnap_store::{NoProgress, PushOptions, SnapshotId, Store};
use rand::{Rng, RngCore, SeedableRng};
use sha2::{Digest, Sha256};

pub const PAGE: usize = 4096;

const WORDS: &[&str] = &[
    "sandbox",
    "checkpoint",
    "restore",
    "gvisor",
    "memory",
    "page",
    "kernel",
    "socket",
    "the",
    "of",
    "runsc",
    "container",
    "pod",
    "node",
    "image",
    "state",
    "fd",
    "mmap",
    "0x7f00",
    "{",
    "}",
    "error",
    "ok",
    "GET /",
    "HTTP/1.1",
    "200",
    "user",
    "\n",
];

/// One page of a mixed memory image: zero, random or text, chosen by `kind` (0..10).
pub fn fill_page(rng: &mut rand::rngs::StdRng, page: &mut [u8], kind: u32) {
    match kind {
        0..=3 => page.fill(0),
        4..=6 => rng.fill_bytes(page),
        _ => {
            let mut i = 0;
            while i < page.len() {
                let w = WORDS[rng.gen_range(0..WORDS.len())].as_bytes();
                let n = w.len().min(page.len() - i);
                page[i..i + n].copy_from_slice(&w[..n]);
                i += n;
                if i < page.len() {
                    page[i] = b' ';
                    i += 1;
                }
            }
        }
    }
}

/// A deterministic mixed image of `pages` pages (40% zero, 30% random, 30% text), in runs
/// of 1..64 pages of one kind, like real guest memory.
pub fn mixed_image(seed: u64, pages: usize) -> Vec<u8> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut out = vec![0u8; pages * PAGE];
    let mut p = 0;
    while p < pages {
        let run = rng.gen_range(1..64).min(pages - p);
        let kind = rng.gen_range(0..10);
        for q in p..p + run {
            fill_page(&mut rng, &mut out[q * PAGE..(q + 1) * PAGE], kind);
        }
        p += run;
    }
    out
}

/// Rewrites `fraction` of the pages at scattered random positions with fresh random bytes.
pub fn scatter_changes(seed: u64, img: &mut [u8], fraction: f64) -> usize {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let pages = img.len() / PAGE;
    let n = ((pages as f64) * fraction) as usize;
    for _ in 0..n {
        let p = rng.gen_range(0..pages);
        rng.fill_bytes(&mut img[p * PAGE..(p + 1) * PAGE]);
    }
    n
}

/// A file shaped like a runsc checkpoint image: `gVisorSF`, 8-byte BE length, JSON metadata,
/// then state bytes.
pub fn runsc_like_image(seed: u64, body_pages: usize) -> Vec<u8> {
    let meta = br#"{"arch":"amd64","cpuid":"fake","version":"release-20221219.0"}"#;
    let mut out = Vec::new();
    out.extend_from_slice(b"gVisorSF");
    out.extend_from_slice(&(meta.len() as u64).to_be_bytes());
    out.extend_from_slice(meta);
    out.extend_from_slice(&mixed_image(seed, body_pages));
    out.extend_from_slice(b"tail");
    out
}

pub fn sha256_hex(b: &[u8]) -> String {
    hex::encode(Sha256::digest(b))
}

/// A manifest JSON value stored as bytes with its `digest` recomputed (what someone who can
/// write to the store, but holds no key, can do). Any `mac` is kept as it was.
pub fn reseal(mut v: serde_json::Value) -> Vec<u8> {
    let mac = v.as_object_mut().and_then(|m| {
        m.remove("digest");
        m.remove("mac")
    });
    let d = sha256_hex(&serde_json::to_vec(&v).unwrap());
    if let Some(m) = v.as_object_mut() {
        m.insert("digest".into(), d.into());
        if let Some(mac) = mac {
            m.insert("mac".into(), mac);
        }
    }
    serde_json::to_vec(&v).unwrap()
}

/// Relative path -> (sha256, mode) of every regular file under `dir`.
pub fn dir_digest(dir: &Path) -> BTreeMap<String, (String, u32)> {
    use std::os::unix::fs::PermissionsExt;
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let e = e.unwrap();
            let ft = e.file_type().unwrap();
            if ft.is_dir() {
                stack.push(e.path());
            } else {
                let rel = e
                    .path()
                    .strip_prefix(dir)
                    .unwrap()
                    .to_string_lossy()
                    .into_owned();
                let data = std::fs::read(e.path()).unwrap();
                let mode = e.metadata().unwrap().permissions().mode() & 0o777;
                out.insert(rel, (sha256_hex(&data), mode));
            }
        }
    }
    out
}

pub fn write_file(dir: &Path, rel: &str, data: &[u8]) {
    let p = dir.join(rel);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(p, data).unwrap();
}

fn p(s: &str) -> ObjPath {
    ObjPath::from(s)
}

/// The object store conformance suite: what podsnap relies on from every backend.
pub async fn object_store_conformance(os: Arc<dyn ObjectStore>, prefix: &str) {
    let os = &*os;
    let data = put_get_and_head(os, prefix).await;
    ranged_gets(os, prefix, &data).await;
    missing_objects_are_not_found(os, prefix).await;
    listing(os, prefix).await;
    create_only_put(os, prefix).await;
    multipart_put(os, prefix).await;
    deletes(os, prefix).await;
}

/// `s` under the conformance suite's `prefix`.
fn key(prefix: &str, s: &str) -> ObjPath {
    p(&format!("{prefix}/{s}"))
}

/// put / get / head of `a/one` (100 000 bytes, which it returns).
async fn put_get_and_head(os: &dyn ObjectStore, prefix: &str) -> Bytes {
    let one = key(prefix, "a/one");
    let data = Bytes::from((0..100_000u32).map(|i| (i % 251) as u8).collect::<Vec<_>>());
    os.put(&one, PutPayload::from(data.clone()))
        .await
        .expect("put");
    let got = os.get(&one).await.expect("get").bytes().await.unwrap();
    assert_eq!(got, data, "get returns what put stored");
    assert_eq!(os.head(&one).await.unwrap().size, data.len() as u64);
    data
}

/// Ranged gets of `a/one` (holding `data`), including one reaching the end.
async fn ranged_gets(os: &dyn ObjectStore, prefix: &str, data: &Bytes) {
    let one = key(prefix, "a/one");
    let r = os.get_range(&one, 1000..5000).await.expect("range");
    assert_eq!(&r[..], &data[1000..5000]);
    let r = os
        .get_range(&one, 99_990..100_000)
        .await
        .expect("tail range");
    assert_eq!(&r[..], &data[99_990..]);
    let rs = os
        .get_ranges(&one, &[0..10, 50_000..50_010])
        .await
        .expect("ranges");
    assert_eq!(&rs[1][..], &data[50_000..50_010]);
}

async fn missing_objects_are_not_found(os: &dyn ObjectStore, prefix: &str) {
    let missing = key(prefix, "a/missing");
    let e = os.get(&missing).await.expect_err("missing get fails");
    assert!(matches!(e, object_store::Error::NotFound { .. }), "{e:?}");
    let e = os
        .get_range(&missing, 0..10)
        .await
        .expect_err("missing range fails");
    assert!(matches!(e, object_store::Error::NotFound { .. }), "{e:?}");
}

/// Listing is recursive and prefix-limited, with modification times.
async fn listing(os: &dyn ObjectStore, prefix: &str) {
    os.put(&key(prefix, "a/two"), PutPayload::from_static(b"2"))
        .await
        .unwrap();
    os.put(&key(prefix, "b/three"), PutPayload::from_static(b"3"))
        .await
        .unwrap();
    let mut listed: Vec<String> = os
        .list(Some(&key(prefix, "a")))
        .map_ok(|m| m.location.to_string())
        .try_collect()
        .await
        .expect("list");
    listed.sort();
    assert_eq!(
        listed,
        vec![format!("{prefix}/a/one"), format!("{prefix}/a/two")]
    );
    let all: Vec<_> = os.list(Some(&p(prefix))).try_collect().await.unwrap();
    assert_eq!(all.len(), 3);
    assert!(all
        .iter()
        .all(|m| m.last_modified.timestamp() > 1_600_000_000));
}

/// A second create-only put of a key fails with AlreadyExists and leaves the first object.
async fn create_only_put(os: &dyn ObjectStore, prefix: &str) {
    let x = key(prefix, "m/x.json");
    let create = PutOptions {
        mode: PutMode::Create,
        ..Default::default()
    };
    os.put_opts(&x, PutPayload::from_static(b"first"), create.clone())
        .await
        .expect("first create");
    let e = os
        .put_opts(&x, PutPayload::from_static(b"second"), create.clone())
        .await
        .expect_err("second create must fail");
    assert!(
        matches!(e, object_store::Error::AlreadyExists { .. }),
        "{e:?}"
    );
    let kept = os.get(&x).await.unwrap().bytes().await.unwrap();
    assert_eq!(
        &kept[..],
        b"first",
        "a failed create leaves the first object"
    );
}

/// Multipart: two 5 MiB parts and a tail (S3's minimum part size).
async fn multipart_put(os: &dyn ObjectStore, prefix: &str) {
    let big_key = key(prefix, "big");
    let big: Vec<u8> = (0..(10 * 1024 * 1024 + 123))
        .map(|i: u32| (i % 239) as u8)
        .collect();
    let upload = os.put_multipart(&big_key).await.expect("multipart start");
    let mut w = WriteMultipart::new_with_chunk_size(upload, 5 * 1024 * 1024);
    w.write(&big);
    w.finish().await.expect("multipart finish");
    let got = os.get(&big_key).await.unwrap().bytes().await.unwrap();
    assert_eq!(got.len(), big.len());
    assert!(got[..] == big[..], "multipart content");
}

/// Deleting every object the suite wrote leaves nothing under its prefix.
async fn deletes(os: &dyn ObjectStore, prefix: &str) {
    for k in ["a/one", "a/two", "b/three", "m/x.json", "big"] {
        os.delete(&key(prefix, k)).await.expect("delete");
    }
    let e = os.head(&key(prefix, "a/one")).await.expect_err("deleted");
    assert!(matches!(e, object_store::Error::NotFound { .. }), "{e:?}");
    let left: Vec<_> = os.list(Some(&p(prefix))).try_collect().await.unwrap();
    assert!(left.is_empty(), "{left:?}");
}

/// The Store suite: byte-exact round trips of synthetic images, incremental dedup, listing.
pub async fn store_suite(store: Store) {
    let work = tempfile::tempdir().unwrap();
    let src = work.path().join("src");
    let mut pages = mixed_image(1, 600);
    write_file(&src, "pages.img", &pages);
    write_file(&src, "checkpoint.img", &runsc_like_image(2, 40));
    write_file(&src, "pages_meta.img", b"tiny");
    write_file(&src, "empty.img", b"");
    write_file(&src, "sub/zeros.img", &vec![0u8; 3 * PAGE + 5]);

    let first = store
        .push(
            &src,
            PushOptions {
                group: Some("g".into()),
                labels: [("app".to_string(), "web".to_string())].into(),
                ..Default::default()
            },
            &NoProgress,
        )
        .await
        .expect("first push");
    assert_eq!(first.bytes_read, dir_size(&src));
    assert!(first.bytes_zero > 0);
    let out = work.path().join("out1");
    store
        .pull(&first.id, &out, &NoProgress)
        .await
        .expect("pull");
    assert_eq!(dir_digest(&out), dir_digest(&src), "byte-exact round trip");

    // 5% scattered changes, pushed with the first as parent
    scatter_changes(3, &mut pages, 0.05);
    write_file(&src, "pages.img", &pages);
    let second = store
        .push(
            &src,
            PushOptions {
                group: Some("g".into()),
                parent: Some(first.id.clone()),
                ..Default::default()
            },
            &NoProgress,
        )
        .await
        .expect("second push");
    assert!(
        second.bytes_uploaded * 4 < first.bytes_uploaded,
        "incremental push uploaded {} vs first {}",
        second.bytes_uploaded,
        first.bytes_uploaded
    );
    assert!(second.bytes_deduplicated > 0);
    let out2 = work.path().join("out2");
    store
        .pull(&second.id, &out2, &NoProgress)
        .await
        .expect("pull child");
    assert_eq!(dir_digest(&out2), dir_digest(&src));

    let list = store.list().await.unwrap();
    let ids: Vec<&SnapshotId> = list.iter().map(|m| &m.id).collect();
    assert!(ids.contains(&&first.id) && ids.contains(&&second.id));
    let latest = store.latest_in_group("g").await.unwrap().unwrap();
    assert_eq!(latest.id, second.id, "newest of the group");
    assert_eq!(
        store.manifest(&second.id).await.unwrap().parent,
        Some(first.id.clone())
    );
}

pub fn dir_size(dir: &Path) -> u64 {
    let mut n = 0;
    for e in std::fs::read_dir(dir).unwrap() {
        let e = e.unwrap();
        if e.file_type().unwrap().is_dir() {
            n += dir_size(&e.path());
        } else {
            n += e.metadata().unwrap().len();
        }
    }
    n
}

/// Every object under the store's prefix, with its bytes.
pub async fn all_objects(store: &Store) -> Vec<(ObjPath, Bytes)> {
    let os = store.object_store();
    let metas: Vec<_> = os.list(None).try_collect().await.unwrap();
    let mut out = Vec::new();
    for m in metas {
        let b = os.get(&m.location).await.unwrap().bytes().await.unwrap();
        out.push((m.location, b));
    }
    out
}

/// A page of incompressible bytes around a marker: stored raw, so the marker is visible in
/// a plain snapshot (the check can fail) and must not be in a sealed one.
const MARKER: &[u8] = b"podsnap-confidential-marker-3f9c";

/// Whether any of `objs` holds [`MARKER`].
fn contains_marker(objs: &[(ObjPath, Bytes)]) -> bool {
    objs.iter()
        .any(|(_, b)| b.windows(MARKER.len()).any(|w| w == MARKER))
}

/// The encrypted suite's world: `store` without keys, `keyed` with `key_a` for group `g`, and
/// a source image in `src` of 32 marked random pages and 32 zero pages.
struct Sealing {
    store: Store,
    keyed: Store,
    key_a: podsnap_store::Key,
    work: tempfile::TempDir,
    src: std::path::PathBuf,
}

impl Sealing {
    fn new(store: Store) -> Sealing {
        let key_a = podsnap_store::Key::from_bytes(&[0xa1; 32]);
        let mut ring = podsnap_store::Keyring::new();
        ring.set_group("g", key_a.clone());
        let keyed = store.with_keyring(ring);
        let mut rng = rand::rngs::StdRng::seed_from_u64(99);
        let mut img = vec![0u8; 64 * PAGE];
        rng.fill_bytes(&mut img[..32 * PAGE]);
        for p in 0..32 {
            img[p * PAGE + 100..p * PAGE + 100 + MARKER.len()].copy_from_slice(MARKER);
        }
        let work = tempfile::tempdir().unwrap();
        let src = work.path().join("src");
        write_file(&src, "pages.img", &img);
        Sealing {
            store,
            keyed,
            key_a,
            work,
            src,
        }
    }

    fn dest(&self, name: &str) -> std::path::PathBuf {
        self.work.path().join(name)
    }

    /// The check can fail: a plain push stores the marker as it is (and gc removes it).
    async fn plain_push_shows_the_marker(&self) {
        let store = &self.store;
        let before = all_objects(store).await;
        assert!(!contains_marker(&before), "marker already in the store");
        let plain = store
            .push(&self.src, opts_in_group("plain"), &NoProgress)
            .await
            .expect("plain push");
        assert!(
            contains_marker(&all_objects(store).await),
            "a plain push stores the raw page as it is"
        );
        store.delete(&plain.id).await.unwrap();
        store.gc(std::time::Duration::ZERO).await.unwrap();
        assert!(
            !contains_marker(&all_objects(store).await),
            "gc removed the plain copy"
        );
    }

    /// An encrypted push: no plaintext in any object, its manifest (readable without a key)
    /// records the key and its packs, and it pulls with the key. Returns the snapshot, its
    /// packs, and every object of the store.
    async fn sealed_push(&self) -> (SnapshotId, Vec<String>, Vec<(ObjPath, Bytes)>) {
        let sealed = self
            .keyed
            .push(&self.src, opts_in_group("g"), &NoProgress)
            .await
            .expect("encrypted push");
        let objs = all_objects(&self.store).await;
        assert!(
            !contains_marker(&objs),
            "plaintext found in an encrypted snapshot's objects"
        );
        let m = self
            .store
            .manifest(&sealed.id)
            .await
            .expect("manifest readable without a key");
        assert_eq!(m.format_version, podsnap_store::FORMAT_VERSION_ENCRYPTED);
        let e = m.encryption.clone().expect("encryption recorded");
        assert_eq!(e.key_id, self.key_a.id());
        assert!(!e.packs.is_empty());
        for p in &e.packs {
            assert!(
                objs.iter()
                    .any(|(loc, _)| loc.as_ref().ends_with(&format!("packs/{p}"))),
                "listed pack {p} exists"
            );
        }
        let out = self.dest("out");
        self.keyed
            .pull(&sealed.id, &out, &NoProgress)
            .await
            .expect("pull with the key");
        assert_eq!(dir_digest(&out), dir_digest(&self.src));
        (sealed.id, e.packs, objs)
    }

    /// Without the key, with the wrong key: refused before anything is written; and a plain
    /// snapshot in a group that has a key is not accepted. Returns that plain snapshot.
    async fn refusals(&self, sealed: &SnapshotId) -> SnapshotId {
        use podsnap_store::StoreError;
        let dest = self.dest("refused");
        let err = self
            .store
            .pull(sealed, &dest, &NoProgress)
            .await
            .unwrap_err();
        assert!(matches!(err, StoreError::Encryption { .. }), "{err}");
        assert!(err.to_string().contains("no key for group g"), "{err}");
        let mut wrong = podsnap_store::Keyring::new();
        wrong.set_group("g", podsnap_store::Key::from_bytes(&[0xb2; 32]));
        let err = self
            .store
            .with_keyring(wrong)
            .pull(sealed, &dest, &NoProgress)
            .await
            .unwrap_err();
        assert!(
            err.to_string()
                .contains("but the key configured for group g"),
            "{err}"
        );
        assert!(!dest.exists());

        let planted = self
            .store
            .push(&self.src, opts_in_group("g"), &NoProgress)
            .await
            .unwrap();
        let err = self
            .keyed
            .pull(&planted.id, &dest, &NoProgress)
            .await
            .unwrap_err();
        assert!(err.to_string().contains("not encrypted"), "{err}");
        assert!(!dest.exists());
        planted.id
    }

    /// An altered manifest with a recomputed digest fails authentication; so does one flipped
    /// byte in a pack, leaving nothing behind. Both objects are put back afterwards.
    async fn tampering_is_detected(
        &self,
        sealed: &SnapshotId,
        packs: &[String],
        objs: &[(ObjPath, Bytes)],
    ) {
        let dest = self.dest("refused");
        let prefix = prefix_of(objs, sealed);
        let mkey = ObjPath::from(format!("{prefix}manifests/{sealed}.json"));
        let os = self.store.object_store();
        let original = os.get(&mkey).await.unwrap().bytes().await.unwrap();
        let mut v: serde_json::Value = serde_json::from_slice(&original).unwrap();
        v["labels"]["app"] = "altered".into();
        os.put(&mkey, PutPayload::from(reseal(v))).await.unwrap();
        let err = self
            .keyed
            .pull(sealed, &dest, &NoProgress)
            .await
            .unwrap_err();
        assert!(err.to_string().contains("authentication failed"), "{err}");
        os.put(&mkey, PutPayload::from(original)).await.unwrap();

        let pack = ObjPath::from(format!("{prefix}packs/{}", packs[0]));
        let good = os.get(&pack).await.unwrap().bytes().await.unwrap();
        let mut bad = good.to_vec();
        bad[40] ^= 0x01;
        os.put(&pack, PutPayload::from(bad)).await.unwrap();
        let err = self
            .keyed
            .pull(sealed, &dest, &NoProgress)
            .await
            .unwrap_err();
        assert!(
            matches!(err, podsnap_store::StoreError::Corrupt { .. })
                && err.to_string().contains("authentication"),
            "{err}"
        );
        assert!(!dest.exists());
        os.put(&pack, PutPayload::from(good)).await.unwrap();
    }

    /// Dedup stays within a key: the same pages under another group key are stored again.
    /// Returns the store holding both keys, the same-key child and the other-key snapshot.
    async fn dedup_within_a_key(&self, sealed: &SnapshotId) -> (Store, SnapshotId, SnapshotId) {
        let mut two = podsnap_store::Keyring::new();
        two.set_group("g", self.key_a.clone());
        two.set_group("h", podsnap_store::Key::from_bytes(&[0xc3; 32]));
        let two = self.store.with_keyring(two);
        let child_of = |group: &str| PushOptions {
            parent: Some(sealed.clone()),
            ..opts_in_group(group)
        };
        let child = two
            .push(&self.src, child_of("g"), &NoProgress)
            .await
            .unwrap();
        assert_eq!(
            child.bytes_deduplicated,
            32 * PAGE as u64,
            "same key: pages reused"
        );
        let other = two
            .push(&self.src, child_of("h"), &NoProgress)
            .await
            .unwrap();
        assert_eq!(other.bytes_deduplicated, 0, "another key: nothing reused");
        let out2 = self.dest("out2");
        two.pull(&other.id, &out2, &NoProgress).await.unwrap();
        assert_eq!(dir_digest(&out2), dir_digest(&self.src));
        (two, child.id, other.id)
    }
}

/// Encryption at rest, over `store` (which must have no keys and may hold other snapshots):
/// the Store suite under a group key, confidentiality of every stored byte, refusals without
/// or with the wrong key, tamper detection, dedup only within a key, and gc without keys.
pub async fn encrypted_suite(store: Store) {
    let s = Sealing::new(store);
    store_suite(s.keyed.clone()).await;
    s.plain_push_shows_the_marker().await;
    let (sealed, packs, objs) = s.sealed_push().await;
    let planted = s.refusals(&sealed).await;
    s.tampering_is_detected(&sealed, &packs, &objs).await;
    let (two, child, other) = s.dedup_within_a_key(&sealed).await;

    // gc needs no key: it keeps what encrypted manifests list and sweeps the rest.
    for id in [&sealed, &other, &planted] {
        s.store.delete(id).await.unwrap();
    }
    let report = s.store.gc(std::time::Duration::ZERO).await.unwrap();
    assert!(report.deleted_objects > 0, "{report:?}");
    assert!(report.broken_snapshots.is_empty(), "{report:?}");
    let out3 = s.dest("out3");
    two.pull(&child, &out3, &NoProgress)
        .await
        .expect("the child survives gc: its reused packs are listed in its manifest");
    assert_eq!(dir_digest(&out3), dir_digest(&s.src));
}

fn opts_in_group(g: &str) -> PushOptions {
    PushOptions {
        group: Some(g.into()),
        ..Default::default()
    }
}

/// The key prefix (with a trailing `/`, or empty) of the store holding snapshot `id`.
fn prefix_of(objs: &[(ObjPath, Bytes)], id: &SnapshotId) -> String {
    let suffix = format!("manifests/{id}.json");
    let loc = objs
        .iter()
        .map(|(l, _)| l.as_ref().to_string())
        .find(|l| l.ends_with(&suffix))
        .expect("the manifest is among the objects");
    loc[..loc.len() - suffix.len()].to_string()
}

/// Faults injected in front of a real backend (`under`, the store a URL opened): transient
/// errors on every kind of call are retried through by push and pull, and a lost response to
/// the manifest's create-only put is checked, not repeated blindly. The backend must give
/// `AlreadyExists` to the repeated create-only put, as the conformance suite requires.
pub async fn fault_suite(under: Arc<dyn ObjectStore>, prefix: &str) {
    use faults::{Faults, Op};
    let f = Faults::new(under);
    let store = Store::from_object_store(f.clone(), prefix, "faults");
    let work = tempfile::tempdir().unwrap();
    let src = work.path().join("src");
    let mut img = vec![0u8; 5 << 20];
    rand::rngs::StdRng::seed_from_u64(41).fill_bytes(&mut img);
    write_file(&src, "pages.img", &img);
    write_file(&src, "checkpoint.img", &runsc_like_image(5, 20));

    f.fail_next(Op::Head, 2);
    f.fail_next(Op::Put, 3);
    f.fail_next(Op::PutCreate, 1);
    let pushed = store
        .push(&src, PushOptions::default(), &NoProgress)
        .await
        .expect("push retries transient errors");
    for op in [Op::Head, Op::Put, Op::PutCreate] {
        assert_eq!(f.pending(op), 0, "every injected {op:?} error was hit");
    }
    f.fail_next(Op::Get, 2);
    f.fail_next(Op::GetRange, 3);
    let out = work.path().join("out");
    store
        .pull(&pushed.id, &out, &NoProgress)
        .await
        .expect("pull retries transient errors");
    assert_eq!(f.pending(Op::Get), 0);
    assert_eq!(f.pending(Op::GetRange), 0);
    assert_eq!(
        dir_digest(&out),
        dir_digest(&src),
        "byte-exact after faults"
    );

    // The commit lands but its answer is lost: the retry meets AlreadyExists from the real
    // backend, finds the manifest is ours, and the push succeeds once.
    let creates = f.calls(Op::PutCreate);
    f.lose_create_responses(1);
    write_file(&src, "checkpoint.img", &runsc_like_image(6, 20));
    let again = store
        .push(&src, PushOptions::default(), &NoProgress)
        .await
        .expect("a lost response to our own commit is success");
    assert_eq!(
        f.calls(Op::PutCreate) - creates,
        2,
        "one retry, answered by AlreadyExists"
    );
    let stored = store.manifest(&again.id).await.unwrap();
    assert_eq!(
        stored.digest, again.manifest.digest,
        "the committed manifest is ours"
    );
}
