//! The node-local page cache through the real podsnapd binary: PrepareRestore (the
//! containerd/CRI path) of snapshot N+1 on a node that restored N downloads only what changed
//! (counted by the daemon's own `podsnap_bytes_total{direction="downloaded"}`), the cache
//! survives a daemon restart, and `podsnapctl prefetch` reports fetched vs already cached.
//! Needs no runsc sandbox: the snapshots are pushed straight into the shared file store.

mod common;

use std::path::Path;
use std::process::{Command, Stdio};

use common::daemon::Daemon;
use podsnap_proto::v1 as pb;
use podsnap_store::{NoProgress, PushOptions, SnapshotId, Store};
use podsnap_testkit::daemon::PodsnapdCmd;
use rand::{Rng, RngCore, SeedableRng};

const PAGE: usize = 4096;
const IMAGE: usize = 32 << 20;

fn write(dir: &Path, name: &str, data: &[u8]) {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join(name), data).unwrap();
}

/// Snapshot N (random pages.img) and N+1 (5% of its pages rewritten, scattered).
async fn n_and_next(store: &Store, dir: &Path) -> (SnapshotId, SnapshotId, u64) {
    let mut rng = rand::rngs::StdRng::seed_from_u64(19);
    let mut img = vec![0u8; IMAGE];
    rng.fill_bytes(&mut img);
    write(&dir.join("n"), "pages.img", &img);
    write(&dir.join("n"), "checkpoint.img", b"state n");
    let n = store
        .push(&dir.join("n"), PushOptions::default(), &NoProgress)
        .await
        .unwrap()
        .id;
    let pages = IMAGE / PAGE;
    for _ in 0..pages * 5 / 100 {
        let p = rng.gen_range(0..pages);
        rng.fill_bytes(&mut img[p * PAGE..(p + 1) * PAGE]);
    }
    write(&dir.join("n1"), "pages.img", &img);
    write(&dir.join("n1"), "checkpoint.img", b"state n+1");
    let r = store
        .push(
            &dir.join("n1"),
            PushOptions {
                parent: Some(n.clone()),
                ..Default::default()
            },
            &NoProgress,
        )
        .await
        .unwrap();
    let logical = r.manifest.files.iter().map(|f| f.size).sum();
    (n, r.id, logical)
}

/// A podsnapd with a 1 GiB page cache, its metrics on a free local port.
fn start(dir: &Path) -> Daemon {
    Daemon::spawn(
        PodsnapdCmd::new(env!("CARGO_BIN_EXE_podsnapd"), dir, "cachenode")
            .arg("--cache-max-bytes=1GiB"),
    )
}

/// What these tests ask of the node.
trait Node {
    fn downloaded(&self) -> f64;
    async fn prepare(&self, snapshot: &SnapshotId, container: &str) -> std::path::PathBuf;
}

impl Node for Daemon {
    fn downloaded(&self) -> f64 {
        self.metrics()
            .counter("podsnap_bytes", &[("direction", "downloaded")])
            .unwrap_or(0.0)
    }

    async fn prepare(&self, snapshot: &SnapshotId, container: &str) -> std::path::PathBuf {
        let mut c = podsnap_proto::client::podsnapd(&self.sock).await.unwrap();
        let r = c
            .prepare_restore(pb::PrepareRestoreRequest {
                snapshot_id: snapshot.to_string(),
                container_id: container.into(),
                ..Default::default()
            })
            .await
            .unwrap_or_else(|e| panic!("prepare-restore: {e}\n{}", self.log_text()))
            .into_inner();
        r.image_dir.into()
    }
}

fn same(a: &Path, b: &Path) {
    for f in ["pages.img", "checkpoint.img"] {
        assert!(
            std::fs::read(a.join(f)).unwrap() == std::fs::read(b.join(f)).unwrap(),
            "{f} differs"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restoring_n_plus_1_after_n_downloads_what_changed_and_the_cache_survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&format!("file://{}", dir.path().join("store").display())).unwrap();
    let (n, n1, logical) = n_and_next(&store, dir.path()).await;

    let node = start(dir.path());
    let d0 = node.downloaded();
    let img = node.prepare(&n, "c-n").await;
    same(&dir.path().join("n"), &img);
    let d1 = node.downloaded();
    assert!(d1 - d0 >= IMAGE as f64, "N downloaded only {}", d1 - d0);

    let img = node.prepare(&n1, "c-n1").await;
    same(&dir.path().join("n1"), &img);
    let d2 = node.downloaded();
    let fraction = (d2 - d1) / logical as f64;
    eprintln!(
        "N+1 after N through podsnapd: downloaded {} of {logical} bytes ({:.1}%)",
        d2 - d1,
        fraction * 100.0
    );
    assert!(
        fraction <= 0.10,
        "restoring N+1 downloaded {:.1}% of its bytes",
        fraction * 100.0
    );
    let m = node.metrics();
    let hits = m.counter("podsnap_cache_hits", &[]).unwrap_or(0.0);
    assert!(hits >= (IMAGE / PAGE) as f64 * 0.9, "{}", m.text());
    let bytes = m.gauge("podsnap_cache_bytes", &[]).unwrap_or(0.0);
    assert!(bytes >= IMAGE as f64, "{}", m.text());

    // A restarted daemon keeps the cache: prefetch finds N+1 already there.
    let mut node = node;
    node.terminate();
    let node = start(dir.path());
    let ctl = Path::new(env!("CARGO_BIN_EXE_podsnapd")).with_file_name("podsnapctl");
    let out = Command::new(ctl)
        .arg("--socket")
        .arg(&node.sock)
        .args(["prefetch", "--json", n1.as_str()])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let cached = v["bytes_cached"].as_u64().unwrap();
    let fetched = v["bytes_fetched"].as_u64().unwrap();
    assert!(cached >= IMAGE as u64 * 99 / 100, "{v}");
    assert_eq!(fetched, 0, "{v}");
    // And a restore after the restart is served from it.
    let d3 = node.downloaded();
    let img = node.prepare(&n1, "c-n1-again").await;
    same(&dir.path().join("n1"), &img);
    let again = node.downloaded() - d3;
    assert!(
        again < logical as f64 * 0.02,
        "downloaded {again} after the restart"
    );
}
