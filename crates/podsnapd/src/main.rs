//! podsnapd: see `podsnapd --help` and the crate docs of the `podsnapd` library.

use anyhow::Context;
use clap::Parser;
use podsnapd::config::{Args, Config};

fn main() {
    // Before any thread starts: bounds the memory the allocator keeps (see the function).
    podsnap_store::limit_malloc_arenas(2);
    let args = Args::parse();
    let code = match run(args) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("podsnapd: {e:#}");
            1
        }
    };
    std::process::exit(code);
}

fn run(args: Args) -> anyhow::Result<()> {
    let cfg = Config::load(args)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    // The OTLP exporter's channel lives on the runtime, so it is set up inside it.
    let telemetry = {
        let _rt = rt.enter();
        podsnapd::telemetry::init(&cfg)?
    };
    let res = rt.block_on(async move {
        let engine = podsnapd::build_engine(cfg.clone()).await?;
        // Jobs an earlier run left unfinished are listed from the start and carried on in
        // the background.
        let pending = engine.adopt_unfinished().await;
        tokio::spawn(engine.clone().recover(pending));
        podsnapd::server::serve(cfg, engine).await
    });
    // Flushed from this thread while the runtime still drives the exporter's connection.
    telemetry.shutdown();
    res
}
