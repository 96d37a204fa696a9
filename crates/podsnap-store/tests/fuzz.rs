//! Hostile input, property-based (proptest; `cargo fuzz` needs nightly): the manifest parser,
//! the index decoder and the pull path over corrupted packs. Properties: never a panic, every
//! alteration is either refused with an error or provably harmless (decodes to exactly what was
//! written), and counts are checked before anything is allocated from them.

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;

use common::*;
use futures::TryStreamExt;
use object_store::path::Path as ObjPath;
use object_store::{ObjectStore, PutPayload};
use podsnap_store::index::{page_count, BlobRef, Codec, FileIndex, ZERO_BLOB};
use podsnap_store::{
    validate_rel_path, FileEntry, IndexRef, Manifest, NoProgress, NodeFacts, PushOptions,
    SnapshotId, Store, StoreError, Totals, FORMAT_VERSION,
};
use proptest::prelude::*;
use rand::{RngCore, SeedableRng};
use serde_json::Value;

fn sample_manifest() -> Manifest {
    Manifest {
        format_version: FORMAT_VERSION.into(),
        id: SnapshotId::new("snap-1").unwrap(),
        created: "2026-01-01T00:00:00.123Z".into(),
        labels: [("app".to_string(), "web".to_string())].into(),
        group: Some("web".into()),
        parent: Some(SnapshotId::new("snap-0").unwrap()),
        source: NodeFacts {
            node_name: "n1".into(),
            ..Default::default()
        },
        runsc_metadata: BTreeMap::from([("arch".to_string(), "amd64".to_string())]),
        sandbox: None,
        files: vec![
            FileEntry {
                path: "pages.img".into(),
                size: 1 << 20,
                mode: 0o644,
                index: IndexRef {
                    digest: "ab".repeat(32),
                    size: 1000,
                },
                zero_bytes: 4096,
            },
            FileEntry {
                path: "sub/checkpoint.img".into(),
                size: 77,
                mode: 0o600,
                index: IndexRef {
                    digest: "cd".repeat(32),
                    size: 200,
                },
                zero_bytes: 0,
            },
        ],
        totals: Totals::default(),
        encryption: None,
        digest: String::new(),
        mac: None,
    }
}

fn arb_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        ".{0,12}".prop_map(Value::from),
        prop_oneof![
            Just("../x"),
            Just("/abs"),
            Just("a/./b"),
            Just("a//b"),
            Just("a\u{0}b"),
            Just("a\\b"),
            Just("pages.img"),
            Just("pages.img/x"),
            Just("2.0"),
            Just("1.9"),
            Just("")
        ]
        .prop_map(Value::from),
    ];
    leaf.prop_recursive(3, 16, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::from),
            prop::collection::btree_map("[a-z_]{1,8}", inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// Paths in a manifest value that a mutation may replace.
const FIELDS: &[&[&str]] = &[
    &["format_version"],
    &["id"],
    &["created"],
    &["labels"],
    &["group"],
    &["parent"],
    &["source"],
    &["source", "cpu"],
    &["source", "extra"],
    &["runsc_metadata"],
    &["files"],
    &["files", "0"],
    &["files", "0", "path"],
    &["files", "0", "size"],
    &["files", "0", "mode"],
    &["files", "0", "index"],
    &["files", "0", "index", "digest"],
    &["files", "0", "index", "size"],
    &["files", "0", "zero_bytes"],
    &["files", "1", "path"],
    &["totals"],
];

fn set_at(v: &mut Value, path: &[&str], new: Value) {
    let mut cur = v;
    for (i, k) in path.iter().enumerate() {
        let last = i + 1 == path.len();
        let next = match cur {
            Value::Object(m) => {
                if last {
                    m.insert(k.to_string(), new);
                    return;
                }
                m.get_mut(*k)
            }
            Value::Array(a) => {
                let Ok(i) = k.parse::<usize>() else { return };
                if last {
                    if i < a.len() {
                        a[i] = new;
                    }
                    return;
                }
                a.get_mut(i)
            }
            _ => return,
        };
        match next {
            Some(n) => cur = n,
            None => return,
        }
    }
}

/// What every accepted manifest must satisfy, checked independently of `validate`.
fn assert_safe(m: &Manifest) {
    assert!(m.format_version.starts_with("1."), "{}", m.format_version);
    assert!(m.files.len() <= 100_000);
    for f in &m.files {
        assert!(validate_rel_path(&f.path).is_ok(), "{:?}", f.path);
        assert!(!f
            .path
            .split('/')
            .any(|c| c == ".." || c == "." || c.is_empty()));
        assert!(f.size <= 1 << 40 && f.mode <= 0o777 && f.zero_bytes <= f.size);
        assert!(f.index.size <= 1 << 30);
        assert!(
            f.index.digest.len() == 64 && f.index.digest.bytes().all(|b| b.is_ascii_hexdigit())
        );
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn manifest_parse_refuses_arbitrary_bytes(bytes in prop::collection::vec(any::<u8>(), 0..2048)) {
        prop_assert!(Manifest::parse(&bytes, "snap-1").is_err());
    }

    #[test]
    fn manifest_parse_refuses_arbitrary_json(v in arb_json()) {
        // Even resealed (the digest matches), random JSON is not a manifest.
        let r = Manifest::parse(&reseal(v), "snap-1");
        prop_assert!(r.is_err());
    }

    #[test]
    fn manifest_byte_mutations_are_refused_or_harmless(
        muts in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..4),
    ) {
        let mut m = sample_manifest();
        let good = m.seal(None);
        let mut bad = good.clone();
        for (i, b) in &muts {
            let i = i.index(bad.len());
            bad[i] = *b;
        }
        match Manifest::parse(&bad, "snap-1") {
            Err(_) => {}
            // Only a change without meaning (whitespace) may pass, and then it is the original.
            Ok(back) => prop_assert_eq!(back, m),
        }
    }

    #[test]
    fn resealed_structural_mutations_never_yield_an_unsafe_manifest(
        edits in prop::collection::vec((0..FIELDS.len(), arb_json()), 1..4),
    ) {
        let mut v = serde_json::to_value(sample_manifest()).unwrap();
        for (f, new) in edits {
            set_at(&mut v, FIELDS[f], new);
        }
        if let Ok(m) = Manifest::parse(&reseal(v), "snap-1") {
            assert_safe(&m);
        }
    }
}

fn arb_index() -> impl Strategy<Value = FileIndex> {
    (
        prop::collection::vec((any::<bool>(), 1u32..40, 0u32..3, any::<bool>()), 1..24),
        1usize..4,
        0u64..4096,
        any::<bool>(),
    )
        .prop_map(|(runs, n_packs, tail, sealed)| {
            let mut idx = FileIndex {
                packs: (0..n_packs).map(|i| [i as u8 + 1; 32]).collect(),
                ..Default::default()
            };
            let mut pages: u64 = 0;
            for (k, (zero, n, pack, raw)) in runs.into_iter().enumerate() {
                if zero {
                    idx.push_extent(ZERO_BLOB, 0, n);
                } else {
                    let blob = idx.blobs.len() as u32;
                    let raw_len = n * 4096;
                    let (codec, stored_len) = if raw {
                        (Codec::Raw, raw_len)
                    } else {
                        (Codec::Zstd, raw_len / 3)
                    };
                    // Sealed blobs (encrypted snapshots) carry a 28-byte nonce and tag.
                    let (codec, stored_len) = if sealed {
                        (codec.sealed(), stored_len + 28)
                    } else {
                        (codec, stored_len)
                    };
                    idx.blobs.push(BlobRef {
                        pack: pack % n_packs as u32,
                        offset: k as u64 * 200_000,
                        stored_len,
                        raw_len,
                        codec,
                    });
                    idx.push_extent(blob, 0, n);
                    for p in 0..n {
                        idx.digests.push([(p % 251) as u8 + 1; 32]);
                    }
                }
                pages += n as u64;
            }
            idx.file_size = (pages - 1) * 4096 + 1 + tail % 4096;
            idx
        })
}

/// Invariants of an accepted index, checked independently of the decoder.
fn assert_consistent(idx: &FileIndex) {
    let covered: u64 = idx.extents.iter().map(|e| e.pages as u64).sum();
    assert_eq!(covered, page_count(idx.file_size));
    let data: u64 = idx
        .extents
        .iter()
        .filter(|e| !e.is_zero())
        .map(|e| e.pages as u64)
        .sum();
    assert_eq!(data, idx.digests.len() as u64);
    for e in idx.extents.iter().filter(|e| !e.is_zero()) {
        let b = idx.blobs[e.blob as usize];
        assert!((b.pack as usize) < idx.packs.len());
        assert!(e.first_page as u64 + e.pages as u64 <= b.pages() as u64);
        assert!(b.raw_len as usize <= 1 << 20);
        let seal = if b.codec.is_sealed() { 28 } else { 0 };
        assert!(b.stored_len as u64 > seal);
        if b.codec.unsealed() == Codec::Raw {
            assert_eq!(b.stored_len as u64, b.raw_len as u64 + seal);
        }
    }
}

#[derive(Debug, Clone)]
enum IdxMut {
    Set(prop::sample::Index, u8),
    Truncate(prop::sample::Index),
    Append(Vec<u8>),
    /// Overwrite one of the header's counts (packs, blobs, extents, digests) or the file size.
    Count(usize, u32),
    Size(u64),
}

fn arb_mut() -> impl Strategy<Value = IdxMut> {
    prop_oneof![
        4 => (any::<prop::sample::Index>(), any::<u8>()).prop_map(|(i, b)| IdxMut::Set(i, b)),
        1 => any::<prop::sample::Index>().prop_map(IdxMut::Truncate),
        1 => prop::collection::vec(any::<u8>(), 1..64).prop_map(IdxMut::Append),
        2 => (0usize..4, prop_oneof![any::<u32>(), 0u32..64, Just(u32::MAX)]).prop_map(|(f, n)| IdxMut::Count(f, n)),
        1 => any::<u64>().prop_map(IdxMut::Size),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1024))]

    #[test]
    fn index_mutations_are_refused_or_decode_to_exactly_what_is_there(
        idx in arb_index(),
        muts in prop::collection::vec(arb_mut(), 1..4),
    ) {
        let mut bytes = idx.encode();
        for m in &muts {
            match m {
                // A truncation may have emptied the buffer: nothing to set or cut then.
                IdxMut::Set(i, b) => if !bytes.is_empty() {
                    let i = i.index(bytes.len());
                    bytes[i] = *b;
                },
                IdxMut::Truncate(i) => if !bytes.is_empty() {
                    let i = i.index(bytes.len());
                    bytes.truncate(i);
                },
                IdxMut::Append(more) => bytes.extend_from_slice(more),
                IdxMut::Count(f, n) => if bytes.len() >= 40 {
                    let at = 20 + 4 * f;
                    bytes[at..at + 4].copy_from_slice(&n.to_le_bytes());
                },
                IdxMut::Size(s) => if bytes.len() >= 16 {
                    bytes[8..16].copy_from_slice(&s.to_le_bytes());
                },
            }
        }
        if let Ok(back) = FileIndex::decode(&bytes) {
            // Nothing dropped or invented: the decoded index is exactly these bytes.
            prop_assert_eq!(back.encode(), bytes);
            assert_consistent(&back);
        }
    }

    #[test]
    fn index_header_counts_beyond_the_buffer_are_refused(
        counts in prop::array::uniform4(any::<u32>()),
        file_size in any::<u64>(),
        body in prop::collection::vec(any::<u8>(), 0..256),
    ) {
        prop_assume!(counts.iter().any(|&c| c > 64));
        let mut bytes = b"PSNPIDX1".to_vec();
        bytes.extend_from_slice(&(file_size % (1 << 40)).to_le_bytes());
        bytes.extend_from_slice(&4096u32.to_le_bytes());
        for c in counts {
            bytes.extend_from_slice(&c.to_le_bytes());
        }
        bytes.extend_from_slice(&0u32.to_le_bytes());
        bytes.extend_from_slice(&body);
        let err = FileIndex::decode(&bytes).unwrap_err();
        prop_assert!(err.contains("does not match"), "{}", err);
    }
}

/// A snapshot pushed once; each case corrupts one stored pack, pulls, and restores the pack.
struct PackFixture {
    rt: tokio::runtime::Runtime,
    os: Arc<dyn ObjectStore>,
    store: Store,
    work: tempfile::TempDir,
    id: SnapshotId,
    packs: Vec<(ObjPath, bytes::Bytes)>,
}

fn pack_fixture(compressible: bool) -> PackFixture {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let os: Arc<dyn ObjectStore> = Arc::new(object_store::memory::InMemory::new());
    let store = Store::from_object_store(os.clone(), "pfx", "memory://fuzz");
    let work = tempfile::tempdir().unwrap();
    let src = work.path().join("src");
    if compressible {
        write_file(&src, "pages.img", &mixed_image(21, 700));
        write_file(&src, "checkpoint.img", &runsc_like_image(22, 30));
    } else {
        let mut img = vec![0u8; 700 * PAGE + 123];
        rand::rngs::StdRng::seed_from_u64(23).fill_bytes(&mut img);
        write_file(&src, "pages.img", &img);
    }
    let (id, packs) = rt.block_on(async {
        let id = store
            .push(&src, PushOptions::default(), &NoProgress)
            .await
            .unwrap()
            .id;
        let metas: Vec<_> = os
            .list(Some(&ObjPath::from("pfx/packs")))
            .try_collect()
            .await
            .unwrap();
        let mut packs = Vec::new();
        for m in metas {
            let b = os.get(&m.location).await.unwrap().bytes().await.unwrap();
            packs.push((m.location, b));
        }
        (id, packs)
    });
    PackFixture {
        rt,
        os,
        store,
        work,
        id,
        packs,
    }
}

impl PackFixture {
    /// Corrupts pack `which` with the flips, pulls, restores the pack; returns the pull result
    /// and whether the pulled files equal the source.
    fn pull_corrupted(&self, which: usize, flips: &[(usize, u8)]) -> Result<bool, StoreError> {
        let (key, good) = &self.packs[which % self.packs.len()];
        let mut bad = good.to_vec();
        for &(i, x) in flips {
            let i = i % bad.len();
            bad[i] ^= x;
        }
        let parent = self.work.path().join("pulls");
        std::fs::create_dir_all(&parent).unwrap();
        let out = parent.join("out");
        let r = self.rt.block_on(async {
            self.os.put(key, PutPayload::from(bad)).await.unwrap();
            let r = self.store.pull(&self.id, &out, &NoProgress).await;
            self.os
                .put(key, PutPayload::from(good.clone()))
                .await
                .unwrap();
            r
        });
        let r = r.map(|_| dir_digest(&out) == dir_digest(&self.work.path().join("src")));
        if r.is_err() {
            let left: Vec<_> = std::fs::read_dir(&parent).unwrap().collect();
            assert!(left.is_empty(), "a failed pull left {left:?}");
        }
        let _ = std::fs::remove_dir_all(&out);
        r
    }
}

fn flips() -> impl Strategy<Value = Vec<(usize, u8)>> {
    prop::collection::vec((any::<usize>(), 1u8..=255), 1..4)
}

#[test]
fn flipped_bytes_in_raw_packs_are_always_caught() {
    let f = pack_fixture(false);
    assert!(!f.packs.is_empty());
    let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig::with_cases(48));
    runner
        .run(&(any::<usize>(), flips()), |(which, flips)| {
            let err = f
                .pull_corrupted(which, &flips)
                .expect_err("every flipped byte of a raw blob changes a page");
            prop_assert!(matches!(err, StoreError::Corrupt { .. }), "{}", err);
            prop_assert!(err.to_string().contains("pages.img at offset"), "{}", err);
            Ok(())
        })
        .unwrap();
}

#[test]
fn flipped_bytes_in_compressed_packs_never_yield_wrong_data() {
    let f = pack_fixture(true);
    let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig::with_cases(64));
    let mut refused = 0u32;
    runner
        .run(&(any::<usize>(), flips()), |(which, flips)| {
            match f.pull_corrupted(which, &flips) {
                Err(e) => prop_assert!(matches!(e, StoreError::Corrupt { .. }), "{}", e),
                // A flip zstd does not look at (a frame header bit) may decode to the same
                // pages: accepted only when every page still verifies, i.e. byte-exact.
                Ok(exact) => prop_assert!(exact, "a corrupted pack produced wrong data"),
            }
            Ok(())
        })
        .unwrap();
    // Sanity: the property above is not vacuous.
    for i in 0..8 {
        if f.pull_corrupted(i, &[(1000 + i * 7919, 0x5a)]).is_err() {
            refused += 1;
        }
    }
    assert!(refused >= 6, "only {refused} of 8 mid-pack flips refused");
}
