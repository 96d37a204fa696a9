//! Lazy images over an in-memory store with a counting, optionally corrupting, wrapper: many
//! restores of one snapshot share one download, a page that fails verification fails the read
//! and the image, and the order readers touch pages becomes the group's hot pages.

use std::collections::BTreeMap;
use std::fmt;
use std::ops::Range;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use futures::stream::BoxStream;
use object_store::path::Path as ObjPath;
use object_store::{
    GetOptions, GetResult, ListResult, MultipartUpload, ObjectMeta, ObjectStore,
    PutMultipartOptions, PutOptions, PutPayload, PutResult,
};
use podsnap_lazy::{LazyStatus, Registry};
use podsnap_store::{NoProgress, PushOptions, SnapshotId, Store};

/// Counts the bytes of ranged reads of packs; can corrupt them and slow them down.
#[derive(Debug)]
struct Counting {
    inner: Arc<dyn ObjectStore>,
    pack_bytes: AtomicU64,
    corrupt: AtomicBool,
    delay: Duration,
}

impl fmt::Display for Counting {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "counting({})", self.inner)
    }
}

#[async_trait]
impl ObjectStore for Counting {
    async fn put_opts(
        &self,
        location: &ObjPath,
        payload: PutPayload,
        opts: PutOptions,
    ) -> object_store::Result<PutResult> {
        self.inner.put_opts(location, payload, opts).await
    }

    async fn put_multipart_opts(
        &self,
        location: &ObjPath,
        opts: PutMultipartOptions,
    ) -> object_store::Result<Box<dyn MultipartUpload>> {
        self.inner.put_multipart_opts(location, opts).await
    }

    async fn get_opts(
        &self,
        location: &ObjPath,
        options: GetOptions,
    ) -> object_store::Result<GetResult> {
        assert!(
            !location.as_ref().contains("packs/") || options.head,
            "packs are read with ranges"
        );
        self.inner.get_opts(location, options).await
    }

    async fn get_range(
        &self,
        location: &ObjPath,
        range: Range<u64>,
    ) -> object_store::Result<Bytes> {
        tokio::time::sleep(self.delay).await;
        let b = self.inner.get_range(location, range).await?;
        if location.as_ref().contains("packs/") {
            self.pack_bytes.fetch_add(b.len() as u64, Ordering::SeqCst);
            if self.corrupt.load(Ordering::SeqCst) {
                let mut v = b.to_vec();
                for x in v.iter_mut() {
                    *x ^= 0x5a;
                }
                return Ok(Bytes::from(v));
            }
        }
        Ok(b)
    }

    async fn head(&self, location: &ObjPath) -> object_store::Result<ObjectMeta> {
        self.inner.head(location).await
    }

    async fn delete(&self, location: &ObjPath) -> object_store::Result<()> {
        self.inner.delete(location).await
    }

    fn list(
        &self,
        prefix: Option<&ObjPath>,
    ) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
        self.inner.list(prefix)
    }

    async fn list_with_delimiter(
        &self,
        prefix: Option<&ObjPath>,
    ) -> object_store::Result<ListResult> {
        self.inner.list_with_delimiter(prefix).await
    }

    async fn copy(&self, from: &ObjPath, to: &ObjPath) -> object_store::Result<()> {
        self.inner.copy(from, to).await
    }

    async fn copy_if_not_exists(&self, from: &ObjPath, to: &ObjPath) -> object_store::Result<()> {
        self.inner.copy_if_not_exists(from, to).await
    }
}

/// A runsc-like image: a small `checkpoint.img`, `pages_meta.img`, and `pages.img` of
/// random, zero and repeated pages.
fn write_image(dir: &Path, pages: usize) -> Vec<u8> {
    std::fs::create_dir_all(dir).unwrap();
    let mut data = vec![0u8; pages * 4096];
    for (i, page) in data.chunks_mut(4096).enumerate() {
        match i % 5 {
            0 => {}
            1 => page.fill((i % 251) as u8),
            _ => page.iter_mut().for_each(|b| *b = rand::random::<u8>()),
        }
    }
    std::fs::write(dir.join("pages.img"), &data).unwrap();
    std::fs::write(dir.join("checkpoint.img"), vec![7u8; 10_000]).unwrap();
    std::fs::write(dir.join("pages_meta.img"), vec![3u8; 3000]).unwrap();
    data
}

async fn setup(
    pages: usize,
    delay: Duration,
) -> (tempfile::TempDir, Store, Arc<Counting>, SnapshotId, Vec<u8>) {
    let tmp = tempfile::tempdir().unwrap();
    let data = write_image(&tmp.path().join("img"), pages);
    let base = Store::from_object_store(
        Arc::new(object_store::memory::InMemory::new()),
        "",
        "memory://",
    );
    let report = base
        .push(
            &tmp.path().join("img"),
            PushOptions {
                group: Some("app=lazy".into()),
                labels: BTreeMap::from([("app".into(), "lazy".into())]),
                ..Default::default()
            },
            &NoProgress,
        )
        .await
        .unwrap();
    let counting = Arc::new(Counting {
        inner: base.object_store().clone(),
        pack_bytes: AtomicU64::new(0),
        corrupt: AtomicBool::new(false),
        delay,
    });
    let c = counting.clone();
    let store = base.map_object_store(move |_| c);
    (tmp, store, counting, report.id, data)
}

async fn packs_total(store: &Store) -> u64 {
    use futures::StreamExt;
    let mut total = 0;
    let mut l = store.object_store().list(Some(&ObjPath::from("packs")));
    while let Some(m) = l.next().await {
        total += m.unwrap().size;
    }
    total
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_restores_of_one_snapshot_download_each_blob_once() {
    let (tmp, store, counting, id, data) = setup(2048, Duration::from_millis(5)).await;
    let registry = Registry::new(store.clone(), tmp.path().join("lazy"));
    let data = Arc::new(data);
    let mut tasks = Vec::new();
    for n in 0..4u64 {
        let (registry, id, data) = (registry.clone(), id.clone(), data.clone());
        tasks.push(tokio::spawn(async move {
            let lease = registry.acquire(&id).await.unwrap();
            lease.start_fill();
            let image = lease.image().clone();
            let file = image
                .files()
                .iter()
                .position(|f| f.path == "pages.img")
                .unwrap();
            // Each "restore" reads the file in its own order, 128 KiB at a time.
            let chunks = data.len() / (128 << 10);
            for k in 0..chunks {
                let c = (k * (2 * n as usize + 1) + n as usize * 7) % chunks;
                let off = (c * (128 << 10)) as u64;
                let got = image.read(file, off, 128 << 10).await.unwrap();
                assert_eq!(
                    got,
                    data[off as usize..off as usize + (128 << 10)],
                    "restore {n} at {off}"
                );
            }
            image.settled().await.unwrap();
            lease
        }));
    }
    let mut leases = Vec::new();
    for t in tasks {
        leases.push(t.await.unwrap());
    }
    assert_eq!(
        registry.open_images(),
        1,
        "one image shared by every restore"
    );
    let downloaded = counting.pack_bytes.load(Ordering::SeqCst);
    let packs = packs_total(&store).await;
    assert!(
        downloaded <= packs,
        "4 restores downloaded {downloaded} bytes of packs, the snapshot has {packs}"
    );
    assert!(downloaded * 10 >= packs * 9, "{downloaded} of {packs}");
    let p = leases[0].image().progress();
    assert_eq!(p.bytes_local, p.bytes_total);
    drop(leases);
    assert_eq!(
        registry.open_images(),
        0,
        "the image goes with its last lease"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_page_that_fails_verification_fails_the_read_and_the_image() {
    // Large and slow enough that the background fill is far from the file's end when the
    // read there comes.
    let (tmp, store, counting, id, _) = setup(16384, Duration::from_millis(200)).await;
    let registry = Registry::new(store, tmp.path().join("lazy"));
    let lease = registry.acquire(&id).await.unwrap();
    lease.start_fill();
    // The small files were verified before acquire returned; from now on packs lie.
    counting.corrupt.store(true, Ordering::SeqCst);
    let image = lease.image().clone();
    let file = image
        .files()
        .iter()
        .position(|f| f.path == "pages.img")
        .unwrap();
    // Page 16382 holds random bytes (a multiple of 5 would be a zero page, never fetched).
    let Err(err) = image.read(file, 16382 * 4096, 4096).await else {
        panic!("a corrupt page was served");
    };
    assert!(err.to_string().contains("pages.img"), "{err}");
    let settled = image.settled().await.unwrap_err().to_string();
    assert!(
        settled.contains("corrupt data for pages.img at offset"),
        "{settled}"
    );
    assert!(matches!(image.status(), LazyStatus::Failed(_)));
    // A failed image is not shared with the next restore.
    counting.corrupt.store(false, Ordering::SeqCst);
    let again = registry.acquire(&id).await.unwrap();
    again.start_fill();
    assert!(!matches!(again.image().status(), LazyStatus::Failed(_)));
    again.image().settled().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pages_read_first_become_the_groups_hot_pages() {
    let (tmp, store, _counting, id, data) = setup(1024, Duration::from_millis(20)).await;
    let registry = Registry::new(store.clone(), tmp.path().join("lazy"));
    let lease = registry.acquire(&id).await.unwrap();
    let image = lease.image().clone();
    let file = image
        .files()
        .iter()
        .position(|f| f.path == "pages.img")
        .unwrap();
    let got = image.read(file, 1000 * 4096, 8192).await.unwrap();
    assert_eq!(got, data[1000 * 4096..1002 * 4096]);
    assert!(
        matches!(image.status(), LazyStatus::Filling),
        "no fill before start_fill"
    );
    lease.start_fill();
    image.settled().await.unwrap();
    let mut hot = None;
    // Recorded for at least 5 s after the open, then stored.
    for _ in 0..500 {
        hot = store.hot_pages("app=lazy").await;
        if hot.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let hot = hot.expect("hot pages stored once the image was complete");
    let pages = hot.pages(10);
    assert_eq!(
        &pages[..2],
        &[
            ("pages.img".to_string(), 1000),
            ("pages.img".to_string(), 1001)
        ]
    );
}
