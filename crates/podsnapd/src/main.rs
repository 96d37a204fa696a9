//! podsnapd: see `podsnapd --help` and the crate docs of the `podsnapd` library.

use anyhow::Context;
use clap::Parser;
use podsnapd::config::{Args, Config, LogFormat};

fn init_logging(format: LogFormat) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    match format {
        LogFormat::Json => builder.json().flatten_event(true).init(),
        LogFormat::Text => builder.init(),
    }
}

fn main() {
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
    init_logging(cfg.log_format);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    rt.block_on(async move {
        let engine = podsnapd::build_engine(cfg.clone()).await?;
        // Jobs an earlier run left unfinished are carried on in the background.
        tokio::spawn(engine.clone().recover());
        podsnapd::server::serve(cfg, engine).await
    })
}
