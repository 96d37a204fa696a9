//! Pushes one directory once and prints the wall time, the process's CPU time and the report:
//! for profiling the push pipeline on a real checkpoint image (`perf record` around it).
//!
//! ```text
//! cargo run --release -p podsnap-store --example push_dir -- DIR STORE_URL [zstd|raw]
//! ```

use std::time::Instant;

use podsnap_store::{Compression, NoProgress, PushOptions, Store};

/// User and system CPU seconds of this process so far.
fn cpu_seconds() -> (f64, f64) {
    // SAFETY: getrusage fills the zeroed struct it is given.
    #[allow(unsafe_code)]
    let ru = unsafe {
        let mut ru: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_SELF, &mut ru);
        ru
    };
    let s = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    (s(ru.ru_utime), s(ru.ru_stime))
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() < 3 {
        eprintln!("usage: push_dir DIR STORE_URL [zstd|raw]");
        std::process::exit(2);
    }
    let compression = match args.get(3).map(String::as_str) {
        None | Some("zstd") => Compression::Zstd,
        Some("raw") => Compression::Raw,
        Some(other) => panic!("unknown compression {other}"),
    };
    let store = Store::open(&args[2]).expect("open store");
    let (u0, s0) = cpu_seconds();
    let t = Instant::now();
    let report = store
        .push(
            std::path::Path::new(&args[1]),
            PushOptions {
                compression,
                ..Default::default()
            },
            &NoProgress,
        )
        .await
        .expect("push");
    let wall = t.elapsed().as_secs_f64();
    let (u1, s1) = cpu_seconds();
    println!(
        "{compression:?}: wall {wall:.3} s, user {:.3} s, sys {:.3} s, read {} B, uploaded {} B",
        u1 - u0,
        s1 - s0,
        report.bytes_read,
        report.bytes_uploaded
    );
}
