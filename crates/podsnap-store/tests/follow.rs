//! Pushes that start while the image is still being written (`Store::push_following`): a
//! writer task appends to `pages.img` in uneven pieces, as runsc does, and the push reads
//! behind it.

mod common;

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use podsnap_store::{
    Follow, NoProgress, Progress, ProgressEvent, PushOptions, Store, StoreError, WriterState,
};
use rand::{RngCore, SeedableRng};
use tokio::sync::watch;

fn random(seed: u64, len: usize) -> Vec<u8> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut v = vec![0u8; len];
    rng.fill_bytes(&mut v);
    v
}

/// Counts bytes read before and after the writer said it was done.
#[derive(Default)]
struct ReadWhileWriting {
    writer_done: AtomicBool,
    read_before: AtomicU64,
    read_after: AtomicU64,
    totals: std::sync::Mutex<Vec<u64>>,
}

impl Progress for ReadWhileWriting {
    fn event(&self, ev: ProgressEvent) {
        match ev {
            ProgressEvent::BytesRead(n) if self.writer_done.load(Ordering::SeqCst) => {
                self.read_after.fetch_add(n, Ordering::SeqCst);
            }
            ProgressEvent::BytesRead(n) => {
                self.read_before.fetch_add(n, Ordering::SeqCst);
            }
            ProgressEvent::Started { total_bytes } => self.totals.lock().unwrap().push(total_bytes),
            _ => {}
        }
    }
}

/// Appends `data` to `dir/rel` in pieces of 64 KiB to 1.5 MiB, a few ms apart.
fn append_slowly(dir: &Path, rel: &str, data: &[u8]) {
    let mut f = std::fs::File::create(dir.join(rel)).unwrap();
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let mut off = 0;
    while off < data.len() {
        let n = (64 << 10) + (rng.next_u32() as usize % (1472 << 10));
        let end = (off + n).min(data.len());
        f.write_all(&data[off..end]).unwrap();
        off = end;
        std::thread::sleep(Duration::from_millis(4));
    }
}

struct Rig {
    store: Store,
    work: tempfile::TempDir,
}

impl Rig {
    fn new() -> Rig {
        let work = tempfile::tempdir().unwrap();
        let store = Store::open(&format!("file://{}/store", work.path().display())).unwrap();
        Rig { store, work }
    }

    fn src(&self) -> PathBuf {
        let d = self.work.path().join("src");
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    async fn manifests(&self) -> usize {
        self.store.list().await.unwrap().len()
    }
}

fn follow(rx: watch::Receiver<WriterState>) -> Follow {
    Follow {
        files: vec!["pages.img".into()],
        state: rx,
        yield_to_writer: true,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_followed_push_reads_while_the_file_grows_and_equals_the_finished_image() {
    let r = Rig::new();
    let src = r.src();
    // 10 MiB + a partial page: not a multiple of the read block or of a page.
    let mut pages = random(1, 10 << 20);
    pages.extend_from_slice(&[0u8; 8192]);
    pages.extend_from_slice(&random(2, 1000));
    let (tx, rx) = watch::channel(WriterState::Writing);
    let progress = Arc::new(ReadWhileWriting::default());
    let writer = {
        let (src, pages, progress) = (src.clone(), pages.clone(), progress.clone());
        std::thread::spawn(move || {
            append_slowly(&src, "pages.img", &pages);
            // On a loaded machine the push may not have been scheduled yet: hold the file
            // open-ended (the writer has not said Done) until the push has read a block of it,
            // or give up after a minute and let the assertion below fail.
            let deadline = std::time::Instant::now() + Duration::from_secs(60);
            while progress.read_before.load(Ordering::SeqCst) < 4 << 20
                && std::time::Instant::now() < deadline
            {
                std::thread::sleep(Duration::from_millis(5));
            }
            // Written last, as runsc finishes checkpoint.img after the pages.
            write_file(&src, "checkpoint.img", &runsc_like_image(3, 10));
            write_file(&src, "pages_meta.img", b"meta");
            progress.writer_done.store(true, Ordering::SeqCst);
            let meta = BTreeMap::from([("runsc".to_string(), "written".to_string())]);
            tx.send(WriterState::Done {
                runsc_metadata: Some(meta),
            })
            .unwrap();
        })
    };
    let pushed = r
        .store
        .push_following(&src, PushOptions::default(), progress.as_ref(), follow(rx))
        .await
        .expect("followed push");
    writer.join().unwrap();

    let before = progress.read_before.load(Ordering::SeqCst);
    assert!(
        before >= 4 << 20,
        "at least one block was pushed before the writer finished (read before: {before})"
    );
    let total =
        pages.len() as u64 + std::fs::metadata(src.join("checkpoint.img")).unwrap().len() + 4;
    assert_eq!(pushed.bytes_read, total);
    assert_eq!(*progress.totals.lock().unwrap(), vec![0, total]);
    let m = &pushed.manifest;
    let files: Vec<_> = m.files.iter().map(|f| (f.path.as_str(), f.size)).collect();
    assert_eq!(
        files,
        vec![
            ("checkpoint.img", total - pages.len() as u64 - 4),
            ("pages.img", pages.len() as u64),
            ("pages_meta.img", 4)
        ]
    );
    assert_eq!(
        m.runsc_metadata.get("runsc").map(String::as_str),
        Some("written")
    );
    assert_eq!(m.files[1].zero_bytes, 8192, "the zero pages of pages.img");

    let out = r.work.path().join("out");
    r.store.pull(&pushed.id, &out, &NoProgress).await.unwrap();
    assert_eq!(dir_digest(&out), dir_digest(&src), "byte-exact");

    // A plain push of the finished directory stores the same pages: it dedups completely.
    let again = r
        .store
        .push(
            &src,
            PushOptions {
                parent: Some(pushed.id.clone()),
                ..Default::default()
            },
            &NoProgress,
        )
        .await
        .unwrap();
    assert_eq!(
        again.bytes_deduplicated + again.bytes_zero,
        total,
        "every page known"
    );
    assert_eq!(
        again.manifest.files[1].index.digest, m.files[1].index.digest,
        "the same pages.img index"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_writer_that_fails_stops_the_push_and_nothing_is_committed() {
    let r = Rig::new();
    let src = r.src();
    let (tx, rx) = watch::channel(WriterState::Writing);
    let writer = {
        let src = src.clone();
        std::thread::spawn(move || {
            append_slowly(&src, "pages.img", &random(4, 6 << 20));
            tx.send(WriterState::Failed(
                "runsc checkpoint exited with status 1".into(),
            ))
            .unwrap();
        })
    };
    let err = r
        .store
        .push_following(&src, PushOptions::default(), &NoProgress, follow(rx))
        .await
        .unwrap_err();
    writer.join().unwrap();
    assert!(matches!(err, StoreError::WriterFailed(_)), "{err}");
    assert!(
        err.to_string()
            .contains("runsc checkpoint exited with status 1"),
        "{err}"
    );
    assert_eq!(r.manifests().await, 0, "nothing committed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_writer_that_goes_away_unfinished_is_a_failure() {
    let r = Rig::new();
    let src = r.src();
    let (tx, rx) = watch::channel(WriterState::Writing);
    write_file(&src, "pages.img", &random(5, 1 << 20));
    drop(tx);
    let err = r
        .store
        .push_following(&src, PushOptions::default(), &NoProgress, follow(rx))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("went away"), "{err}");
    assert_eq!(r.manifests().await, 0);
}

#[tokio::test]
async fn a_followed_file_the_writer_never_wrote_is_named() {
    let r = Rig::new();
    let src = r.src();
    write_file(&src, "checkpoint.img", b"state");
    let (_tx, rx) = watch::channel(WriterState::Done {
        runsc_metadata: None,
    });
    let err = r
        .store
        .push_following(&src, PushOptions::default(), &NoProgress, follow(rx))
        .await
        .unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains("pages.img") && msg.contains("finished without it"),
        "{msg}"
    );
    assert_eq!(r.manifests().await, 0);
}

#[tokio::test]
async fn a_followed_path_outside_the_directory_is_refused() {
    let r = Rig::new();
    let src = r.src();
    let (_tx, rx) = watch::channel(WriterState::Writing);
    let err = r
        .store
        .push_following(
            &src,
            PushOptions::default(),
            &NoProgress,
            Follow {
                files: vec!["../elsewhere".into()],
                state: rx,
                yield_to_writer: true,
            },
        )
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::UnsupportedFile { .. }), "{err}");
}

/// Files under `dir`, recursively (none if it does not exist).
fn count_files(dir: &Path) -> usize {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return 0;
    };
    rd.map(|e| e.unwrap().path())
        .map(|p| if p.is_dir() { count_files(&p) } else { 1 })
        .sum()
}

/// A runc-like writer of `pages` (then checkpoint.img) into `src` that keeps saying
/// "writing" until the test sends on the returned sender, so the test can look at the store
/// while the writer has not finished.
fn held_writer(
    src: &Path,
    pages: &[u8],
) -> (
    std::thread::JoinHandle<()>,
    watch::Receiver<WriterState>,
    std::sync::mpsc::Sender<()>,
) {
    let (tx, rx) = watch::channel(WriterState::Writing);
    let (release_tx, release_rx) = std::sync::mpsc::channel::<()>();
    let (src, pages) = (src.to_path_buf(), pages.to_vec());
    let writer = std::thread::spawn(move || {
        append_slowly(&src, "pages.img", &pages);
        write_file(&src, "checkpoint.img", &runsc_like_image(5, 4));
        release_rx.recv().unwrap();
        tx.send(WriterState::Done {
            runsc_metadata: None,
        })
        .unwrap();
    });
    (writer, rx, release_tx)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_packs_wait_in_memory_until_the_writer_is_done_then_are_uploaded() {
    let r = Rig::new();
    let src = r.src();
    let packs_dir = r.work.path().join("store").join("packs");
    // 16 MiB of new pages: several packs' worth, under the 64 MiB held at most.
    let pages = random(11, 16 << 20);
    let (writer, rx, release_tx) = held_writer(&src, &pages);
    let progress = Arc::new(ReadWhileWriting::default());
    let push = {
        let (store, src, progress) = (r.store.clone(), src.clone(), progress.clone());
        tokio::spawn(async move {
            store
                .push_following(&src, PushOptions::default(), progress.as_ref(), follow(rx))
                .await
        })
    };
    // Wait until the push has read all but the last block of pages.img (that one is known
    // complete only when the writer says so) while the writer still writes.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while progress.read_before.load(Ordering::SeqCst) < pages.len() as u64 - (4 << 20) {
        assert!(
            std::time::Instant::now() < deadline,
            "the push never read pages.img"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // Give any upload that would have started a moment to land.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        count_files(&packs_dir),
        0,
        "no pack is written while the writer still writes"
    );
    release_tx.send(()).unwrap();
    let pushed = push.await.unwrap().expect("followed push");
    writer.join().unwrap();
    assert!(
        count_files(&packs_dir) >= 4,
        "the held packs were uploaded once the writer was done: {} packs",
        count_files(&packs_dir)
    );
    assert!(pushed.bytes_uploaded >= pages.len() as u64);
    let out = r.work.path().join("out");
    r.store.pull(&pushed.id, &out, &NoProgress).await.unwrap();
    assert_eq!(dir_digest(&out), dir_digest(&src), "byte-exact");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_yielding_packs_are_written_while_the_writer_still_writes() {
    let r = Rig::new();
    let src = r.src();
    let packs_dir = r.work.path().join("store").join("packs");
    let pages = random(12, 16 << 20);
    let (writer, rx, release_tx) = held_writer(&src, &pages);
    let progress = Arc::new(ReadWhileWriting::default());
    let push = {
        let (store, src, progress) = (r.store.clone(), src.clone(), progress.clone());
        let f = Follow {
            yield_to_writer: false,
            ..follow(rx)
        };
        tokio::spawn(async move {
            store
                .push_following(&src, PushOptions::default(), progress.as_ref(), f)
                .await
        })
    };
    // Packs land in the store while the writer has not said it is done.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while count_files(&packs_dir) < 2 {
        assert!(
            std::time::Instant::now() < deadline,
            "no pack was written while the writer wrote (read {} bytes)",
            progress.read_before.load(Ordering::SeqCst)
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(
        r.manifests().await,
        0,
        "nothing committed before the writer is done"
    );
    release_tx.send(()).unwrap();
    let pushed = push.await.unwrap().expect("followed push");
    writer.join().unwrap();
    let out = r.work.path().join("out");
    r.store.pull(&pushed.id, &out, &NoProgress).await.unwrap();
    assert_eq!(dir_digest(&out), dir_digest(&src), "byte-exact");
}
