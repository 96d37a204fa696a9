//! Load: many checkpoints and restores at once on one node keep memory and file descriptors
//! bounded, because at most `max_transfers` uploads or downloads run at a time and every
//! transfer's buffers are bounded. The daemon runs in this process over the runtime double
//! (its images are real files of the configured size) and a real file store, alone in this
//! test binary so that its memory is what is measured.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::harness::*;
use podsnap_runtime::testing::FakeRuntime;
use podsnap_store::Store;
use podsnapd::config::Args;

const JOBS: usize = 12;
const IMAGE_MIB: usize = 24;

fn rss_kib() -> u64 {
    let s = std::fs::read_to_string("/proc/self/status").unwrap();
    s.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}

/// Samples RSS and open fds every few milliseconds until stopped; returns the peaks.
fn sampler(stop: Arc<AtomicBool>) -> std::thread::JoinHandle<(u64, usize)> {
    std::thread::spawn(move || {
        let (mut rss, mut fds) = (0, 0);
        while !stop.load(Ordering::Relaxed) {
            rss = rss.max(rss_kib());
            fds = fds.max(open_fds());
            std::thread::sleep(Duration::from_millis(3));
        }
        (rss, fds)
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn many_concurrent_checkpoints_and_restores_stay_within_memory_and_fd_bounds() {
    let fake = FakeRuntime::new().with_image_bytes(IMAGE_MIB << 20);
    for i in 0..JOBS {
        fake.add_running(&format!("load{i}"));
    }
    let store_dir = tempfile::tempdir().unwrap();
    let store = Store::open(&format!("file://{}", store_dir.path().display())).unwrap();
    let h = harness_with(
        Arc::new(fake),
        store,
        Args {
            max_transfers: Some(1),
            ..Default::default()
        },
    )
    .await;
    let (rss0, fds0) = (rss_kib(), open_fds());

    let stop = Arc::new(AtomicBool::new(false));
    let peaks = sampler(stop.clone());
    let mut tasks = Vec::new();
    for i in 0..JOBS {
        let mut c = h.client.clone();
        tasks.push(tokio::spawn(async move {
            let (progress, snap) = run_checkpoint(
                &mut c,
                checkpoint_req(&format!("load{i}"), &[], &[], 0, true),
            )
            .await;
            let waited = progress
                .iter()
                .any(|p| p.message.contains("waiting for a transfer slot"));
            (waited, snap.expect("checkpoint succeeds").id)
        }));
    }
    let mut snaps = Vec::new();
    let mut waited = 0;
    for t in tasks {
        let (w, id) = t.await.unwrap();
        waited += w as usize;
        snaps.push(id);
    }
    // Now as many restores at once.
    let bundle = tempfile::tempdir().unwrap();
    std::fs::write(bundle.path().join("config.json"), "{}").unwrap();
    let mut tasks = Vec::new();
    for (i, snap) in snaps.iter().enumerate() {
        let (mut c, snap, bundle) = (h.client.clone(), snap.clone(), bundle.path().to_owned());
        tasks.push(tokio::spawn(async move {
            common::restore(&mut c, &snap, &bundle, &format!("restored{i}"), None).await
        }));
    }
    for t in tasks {
        t.await.unwrap().expect("every restore succeeds");
    }
    stop.store(true, Ordering::Relaxed);
    let (rss_peak, fds_peak) = peaks.join().unwrap();

    let grew_mib = rss_peak.saturating_sub(rss0) / 1024;
    let more_fds = fds_peak.saturating_sub(fds0);
    eprintln!(
        "{JOBS} checkpoints + {JOBS} restores of {IMAGE_MIB} MiB, 1 transfer slot: \
         RSS {} -> {} MiB (+{grew_mib}), fds {fds0} -> {fds_peak} (+{more_fds}), \
         {waited} checkpoints waited for a slot",
        rss0 / 1024,
        rss_peak / 1024
    );
    assert!(
        waited > 0,
        "no checkpoint ever waited: transfers are not bounded"
    );
    // One transfer's buffers are a few dozen MiB; twelve at once would be several hundred.
    assert!(grew_mib < 160, "RSS grew by {grew_mib} MiB");
    assert!(
        more_fds < 48,
        "{more_fds} more file descriptors open at the peak"
    );
}
