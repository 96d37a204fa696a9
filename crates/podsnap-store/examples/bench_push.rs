//! Measures push/pull of a synthetic mixed memory image against a local file store.
//!
//! ```text
//! cargo run --release -p podsnap-store --example bench_push -- WORKDIR [SIZE_MIB]
//! ```
//!
//! Writes WORKDIR/img/pages.img (SIZE_MIB, default 1024: runs of zero, random and text
//! pages), pushes it to file://WORKDIR/store, rewrites 5% of the pages at scattered positions,
//! pushes again with the first as parent, pulls the second, and prints one line per step.
//! Compare with `tar -C WORKDIR/img -cf - . | zstd -1 -T0 > x.tar.zst` and its inverse.

use std::path::Path;
use std::time::Instant;

use podsnap_store::{NoProgress, PushOptions, Store};
use rand::{Rng, RngCore, SeedableRng};

const PAGE: usize = 4096;
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

fn make_image(path: &Path, pages: usize) {
    let mut rng = rand::rngs::StdRng::seed_from_u64(1);
    let mut out = vec![0u8; pages * PAGE];
    let mut p = 0;
    while p < pages {
        let run = rng.gen_range(1..64).min(pages - p);
        let kind = rng.gen_range(0..10);
        for q in p..p + run {
            let page = &mut out[q * PAGE..(q + 1) * PAGE];
            match kind {
                0..=3 => {}
                4..=6 => rng.fill_bytes(page),
                _ => {
                    let mut i = 0;
                    while i < PAGE {
                        let w = WORDS[rng.gen_range(0..WORDS.len())].as_bytes();
                        let n = w.len().min(PAGE - i);
                        page[i..i + n].copy_from_slice(&w[..n]);
                        i += n + 1;
                    }
                }
            }
        }
        p += run;
    }
    std::fs::write(path, out).unwrap();
}

fn du(dir: &Path) -> u64 {
    let mut n = 0;
    for e in std::fs::read_dir(dir).unwrap() {
        let e = e.unwrap();
        let md = e.metadata().unwrap();
        n += if md.is_dir() { du(&e.path()) } else { md.len() };
    }
    n
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let work = Path::new(
        args.get(1)
            .map(String::as_str)
            .unwrap_or("/tmp/podsnap-bench"),
    );
    let mib: usize = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(1024);
    let img = work.join("img");
    let _ = std::fs::remove_dir_all(work.join("store"));
    let _ = std::fs::remove_dir_all(work.join("out"));
    std::fs::create_dir_all(&img).unwrap();
    let file = img.join("pages.img");
    if std::fs::metadata(&file).map(|m| m.len()).unwrap_or(0) != (mib << 20) as u64 {
        make_image(&file, mib * 256);
    }
    let store = Store::open(&format!("file://{}", work.join("store").display())).unwrap();

    let t = Instant::now();
    let first = store
        .push(&img, PushOptions::default(), &NoProgress)
        .await
        .unwrap();
    let t_first = t.elapsed();
    let stored = du(&work.join("store"));
    println!(
        "first push: {:.2}s, read {} MiB, uploaded {} bytes ({:.1}% of image), objects {}",
        t_first.as_secs_f64(),
        first.bytes_read >> 20,
        first.bytes_uploaded,
        100.0 * first.bytes_uploaded as f64 / first.bytes_read as f64,
        first.objects_written
    );
    println!("store size after first push: {stored} bytes");

    // 5% scattered page changes.
    let mut data = std::fs::read(&file).unwrap();
    let pages = data.len() / PAGE;
    let mut rng = rand::rngs::StdRng::from_entropy();
    for _ in 0..pages / 20 {
        let p = rng.gen_range(0..pages);
        rng.fill_bytes(&mut data[p * PAGE..(p + 1) * PAGE]);
    }
    std::fs::write(&file, &data).unwrap();
    drop(data);
    let t = Instant::now();
    let second = store
        .push(
            &img,
            PushOptions {
                parent: Some(first.id.clone()),
                ..Default::default()
            },
            &NoProgress,
        )
        .await
        .unwrap();
    let t_second = t.elapsed();
    println!(
        "incremental push (5% scattered): {:.2}s ({:.0}% of first), uploaded {} bytes ({:.1}% of image), objects {}",
        t_second.as_secs_f64(),
        100.0 * t_second.as_secs_f64() / t_first.as_secs_f64(),
        second.bytes_uploaded,
        100.0 * second.bytes_uploaded as f64 / second.bytes_read as f64,
        second.objects_written
    );

    let out = work.join("out");
    let t = Instant::now();
    let pr = store.pull(&second.id, &out, &NoProgress).await.unwrap();
    println!(
        "pull: {:.2}s, downloaded {} bytes, wrote {} bytes",
        t.elapsed().as_secs_f64(),
        pr.bytes_downloaded,
        pr.bytes_written
    );
    let a = std::fs::read(&file).unwrap();
    let b = std::fs::read(out.join("pages.img")).unwrap();
    assert!(a == b, "pulled image differs");
    println!("pulled image verified byte-exact");
}
